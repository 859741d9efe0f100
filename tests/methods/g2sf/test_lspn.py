import jax
import jax.numpy as jnp
import numpy as np
import torch

from g2sf_jax.methods.g2sf import lspn
from references import torch_g2sf

RGB, PCD = 12, 20


def _torch_model(seed=0):
  torch.manual_seed(seed)
  return torch_g2sf.GateNet(RGB + PCD, hidden=24, emb=8).eval()


def test_forward_matches_torch():
  tm = _torch_model()
  sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
  params = lspn.params_from_torch(sd)
  model = lspn.LSPN(hidden=24, emb_dim=8)
  rng = np.random.default_rng(0)
  f = rng.normal(size=(64, RGB + PCD)).astype(np.float32)
  m = rng.normal(size=(64, RGB + PCD)).astype(np.float32)
  m[:4] = f[:4] + 1e-5  # below the 1e-3 norm floor
  w, inter = model.apply({'params': params}, lspn.direction(f, m), m, deterministic=True)
  with torch.no_grad():
    w_t = tm(torch.from_numpy(f), torch.from_numpy(m)).numpy()
  np.testing.assert_allclose(np.asarray(w), w_t, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(np.tanh(inter['logits'])), w_t, rtol=1e-5)
  theta = torch.tensor([0.7, -1.2])
  mu = torch.tensor([3.0, 0.5])
  sig = torch_g2sf.sigma(theta)
  l_t, s_t = torch_g2sf.unified(torch.from_numpy(f), torch.from_numpy(m), torch.from_numpy(w_t), sig, mu, RGB)
  dist = lspn.modality_distances(f, m, RGB)
  np.testing.assert_allclose(np.asarray(dist / mu.numpy()), s_t.numpy(), rtol=1e-5)
  sig_j = lspn.global_scale(jnp.asarray(theta.numpy()))
  np.testing.assert_allclose(np.asarray(sig_j), sig.numpy(), rtol=1e-6)
  unified = lspn.unified_score(dist, w, sig_j, jnp.asarray(mu.numpy()))
  np.testing.assert_allclose(np.asarray(unified), l_t[:, 0].numpy(), rtol=1e-5)


def test_init_statistics_and_sigma_start():
  model = lspn.LSPN(hidden=512, emb_dim=128)
  params = lspn.init_params(model, jax.random.key(0), 1920)
  k = np.asarray(params['direction_mlp']['hidden']['kernel'])
  b = np.asarray(params['direction_mlp']['hidden']['bias'])
  bound = 1 / np.sqrt(1920)
  assert k.shape == (1920, 512) and np.abs(k).max() <= bound and np.abs(b).max() <= bound
  np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.01)  # uniform, not lecun-normal
  b2 = np.asarray(params['regressor']['out']['bias'])
  assert np.abs(b2).max() <= 1 / np.sqrt(256) and b2.shape == (2,)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert abs(n - 2.16e6) < 0.01e6  # algorithms.md §4.4
  np.testing.assert_array_equal(np.asarray(lspn.global_scale(jnp.zeros(2))), [0.5, 0.5])


def test_dropout_only_in_training():
  model = lspn.LSPN(hidden=64, emb_dim=8, dropout=0.5)
  params = lspn.init_params(model, jax.random.key(1), RGB + PCD)
  x = jax.random.normal(jax.random.key(2), (16, RGB + PCD))
  a, _ = model.apply({'params': params}, x, x, deterministic=True)
  b, _ = model.apply({'params': params}, x, x, deterministic=True)
  c, _ = model.apply({'params': params}, x, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
  d, _ = model.apply({'params': params}, x, x, deterministic=False, rngs={'dropout': jax.random.key(4)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(c, d)
  assert np.all(np.asarray(c) > np.exp(-1) - 1e-6) and np.all(np.asarray(c) < np.e + 1e-6)
