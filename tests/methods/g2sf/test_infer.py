import numpy as np
import pytest
import torch

from experiments.configs.common import get_base_config
from g2sf_jax import distributed, memory_bank
from g2sf_jax.methods.g2sf import infer
from g2sf_jax.methods.g2sf.train import FusionState
from g2sf_jax.methods.g2sf import lspn
from references import torch_g2sf

RGB, PCD, K = 6, 10, 40


def _setup(seed=0):
  torch.manual_seed(seed)
  tm = torch_g2sf.GateNet(RGB + PCD, hidden=16, emb=4).eval()
  params = lspn.params_from_torch({k: v.detach().numpy() for k, v in tm.state_dict().items()})
  state = FusionState(lspn_params=params, theta=np.float32([0.4, -0.3]), mu=np.float32([2.0, 0.7]), margin=1.0,
                      best_val=0.0, epoch=0)
  cfg = get_base_config()
  cfg.g2sf.hidden, cfg.g2sf.emb_dim = 16, 4
  return tm, state, cfg


def _torch_scores(tm, state, f, protos, background):
  """Reference fused score: per rank j, torch LSPN + pairwise_distance; background w := 1 (algorithms.md §4.6)."""
  sig = torch_g2sf.sigma(torch.from_numpy(state.theta))
  mu = torch.from_numpy(state.mu)
  ls, ws = [], []
  with torch.no_grad():
    for j in range(protos.shape[1]):
      ft, mt = torch.from_numpy(f), torch.from_numpy(protos[:, j])
      w = tm(ft, mt)
      w[torch.from_numpy(background)] = 1.0
      unified, _ = torch_g2sf.unified(ft, mt, w, sig, mu, RGB)
      ls.append(unified[:, 0].numpy())
      ws.append(w.numpy())
  return np.stack(ls, 1), ws[0]


@pytest.mark.parametrize('mode', ['min', 'max', 'average', 'zero'])
def test_patch_scores_match_torch(mode):
  tm, state, cfg = _setup()
  cfg.g2sf.scoring_mode = mode
  rng = np.random.default_rng(1)
  n, j = 50, 6
  f = rng.normal(size=(n, RGB + PCD)).astype(np.float32)
  protos = (f[:, None] + 0.5 * rng.normal(size=(n, j, RGB + PCD))).astype(np.float32)
  background = rng.random(n) < 0.3
  out = infer.patch_scores(state, cfg.g2sf, f[:, :RGB], f[:, RGB:], protos[..., :RGB], protos[..., RGB:], background)
  unified, w0 = _torch_scores(tm, state, f, protos, background)
  agg = {'min': unified.min(1), 'max': unified.max(1), 'average': unified.mean(1), 'zero': unified[:, 0]}[mode]
  np.testing.assert_allclose(np.asarray(out['score']), agg, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out['unified']), unified, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out['weights']), w0, rtol=1e-5)
  assert np.all(np.asarray(out['weights'])[background] == 1.0)
  assert not np.any(np.isclose(np.asarray(out['weights'])[~background], 1.0))


def test_bad_scoring_mode():
  _, state, cfg = _setup()
  cfg.g2sf.scoring_mode = 'weight'
  with pytest.raises(ValueError, match='scoring_mode'):
    infer.patch_scores(state, cfg.g2sf, np.zeros((2, RGB)), np.zeros((2, PCD)), np.zeros((2, 6, RGB)),
                       np.zeros((2, 6, PCD)), np.zeros(2, bool))


@pytest.mark.parametrize('img_grid', [28, 56])
def test_score_one_sample(img_grid):
  tm, state, cfg = _setup(1)
  rng = np.random.default_rng(2)
  cs = rng.normal(size=(K, RGB)).astype(np.float32), rng.normal(size=(K, PCD)).astype(np.float32)
  img = rng.normal(size=(img_grid, img_grid, RGB)).astype(np.float32)
  pcd = rng.normal(size=(56, 56, PCD)).astype(np.float32)
  pcd[:10] = 0  # background rows
  placed = tuple(memory_bank.place_bank(c, distributed.make_mesh()) for c in cs)
  img56 = np.repeat(np.repeat(img, 56 // img_grid, 0), 56 // img_grid, 1).reshape(-1, RGB)
  # The anchors the unimodal search keeps (20 per patch); FUS takes its 6 nearest from them.
  anchors = tuple(memory_bank.knn_search(x, bank, 20)[1] for x, bank in zip((img56, pcd.reshape(-1, PCD)), placed))
  out = infer.score(state, cfg, img56, pcd.reshape(-1, PCD), placed, anchors)
  f = np.concatenate([img56, pcd.reshape(-1, PCD)], 1)
  # brute-force 6 nearest per modality, paired by rank
  ir = np.argsort(((img56[:, None] - cs[0][None]) ** 2).sum(-1), 1)[:, :6]
  ip = np.argsort(((pcd.reshape(-1, PCD)[:, None] - cs[1][None]) ** 2).sum(-1), 1)[:, :6]
  protos = np.concatenate([cs[0][ir], cs[1][ip]], -1)
  unified, w0 = _torch_scores(tm, state, f, protos, pcd.reshape(-1, PCD).sum(-1) == 0)
  np.testing.assert_allclose(out['map56'].reshape(-1), unified.min(1), rtol=1e-5)
  assert out['image_score'] == pytest.approx(unified.min(1).max(), rel=1e-5)
  np.testing.assert_allclose(out['weights'].reshape(-1, 2), w0, rtol=1e-5)
  assert np.all(out['weights'][:10] == 1.0)
  assert out['map224'].shape == (224, 224)
  with pytest.raises(ValueError, match='memory_bank.num_anchors'):
    infer.score(state, cfg, img56, pcd.reshape(-1, PCD), placed, tuple(a[:, :5] for a in anchors))
  np.testing.assert_allclose(out['map224'], memory_bank.score_map(unified.min(1).astype(np.float32)), rtol=1e-5)
