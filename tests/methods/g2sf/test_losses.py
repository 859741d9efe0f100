import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from g2sf_jax.methods.g2sf import losses
from g2sf_jax.methods.g2sf import lspn
from references import torch_g2sf

B = 48


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  normal = rng.random(B) < 0.5
  l0 = np.where(normal, rng.uniform(0.2, 1.5, B), rng.uniform(0.8, 4.0, B)).astype(np.float32)
  return rng, normal, l0


def _y(normal):
  return torch.from_numpy(np.where(normal, 1, -1))


@pytest.mark.parametrize('weighted', [True, False])
def test_separation_and_margin_values_and_grads(weighted):
  _, normal, l0 = _batch()
  ms = 5.0
  rep = torch.from_numpy(l0[:, None]).requires_grad_(True)
  ref = torch_g2sf.separation(rep, _y(normal), ms, weighted=weighted) + 10 * torch_g2sf.margin(rep, _y(normal))
  ref.backward()
  fn = lambda u: (losses.separation(u ** 2, normal, ms, 2.0, weighted) + 10 * losses.margin(u ** 2, normal))
  val, grad = jax.value_and_grad(fn)(jnp.asarray(l0))
  np.testing.assert_allclose(float(val), ref.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), rep.grad[:, 0].numpy(), rtol=1e-5, atol=1e-7)


def test_scaling_and_alignment():
  rng, normal, _ = _batch(1)
  w = np.exp(np.tanh(rng.normal(size=(B, 2)))).astype(np.float32)
  wt = torch.from_numpy(w)
  np.testing.assert_allclose(float(losses.scaling(w, normal)), torch_g2sf.scaling(wt, _y(normal)).item(), rtol=1e-6)
  np.testing.assert_allclose(float(losses.alignment(w)), torch_g2sf.alignment(wt).item(), rtol=1e-6)


@pytest.mark.parametrize('mode', ['reference', 'per_row'])
def test_consistency(mode):
  rng, _, l0 = _batch(2)
  anchor = 5
  s0 = rng.uniform(0.5, 2, (B, 2)).astype(np.float32)
  ls = [(l0 * rng.uniform(0.7, 1.6, B)).astype(np.float32) for _ in range(2 * anchor)]
  ss = [(s0 * rng.uniform(0.8, 1.5, (B, 1))).astype(np.float32) for _ in range(2 * anchor)]
  tt = lambda a: torch.from_numpy(a)
  ref = torch_g2sf.consistency(tt(l0[:, None]), tt(s0), [tt(u[:, None]) for u in ls], [tt(s) for s in ss], anchor,
                               per_row=mode == 'per_row')
  got = losses.consistency(l0, s0.mean(1), np.stack(ls[:anchor]), np.stack([s.mean(1) for s in ss[:anchor]]),
                           np.stack(ls[anchor:]), 1.2, mode)
  np.testing.assert_allclose(float(got), ref.item(), rtol=1e-5)
  other = 'per_row' if mode == 'reference' else 'reference'
  assert abs(float(losses.consistency(l0, s0.mean(1), np.stack(ls[:anchor]), np.stack([s.mean(1) for s in ss[:anchor]]),
                                      np.stack(ls[anchor:]), 1.2, other)) - ref.item()) > 1e-4
  with pytest.raises(ValueError, match='g2sf.consistency'):
    losses.consistency(l0, s0.mean(1), np.stack(ls[:anchor]), np.stack(ls[:anchor]), np.stack(ls[anchor:]), 1.2, 'x')


def test_l1_and_total_weights():
  torch.manual_seed(0)
  tm = torch_g2sf.GateNet(10, hidden=16, emb=4)
  params = lspn.params_from_torch({k: v.detach().numpy() for k, v in tm.state_dict().items()})
  np.testing.assert_allclose(float(losses.l1(params)), torch_g2sf.l1(tm).item(), rtol=1e-5)
  c = ml_collections.ConfigDict(dict(w_margin=10.0, w_scaling=3.0, w_alignment=20.0, w_consistency=40.0, w_l1=5e-4))
  terms = dict(separation=1.0, margin=2.0, scaling=3.0, alignment=4.0, consistency=5.0, l1=6.0)
  assert float(losses.total(terms, c)) == pytest.approx(1 + 20 + 9 + 80 + 200 + 3e-3)
