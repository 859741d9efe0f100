"""G²SF scoring of test samples with a trained LSPN and global scale (SPEC §4.6)."""
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import memory_bank
from g2sf_jax.features import upsample_nearest2x
from g2sf_jax.models import lspn

if TYPE_CHECKING:
  from g2sf_jax.fusion.train import FusionState

SCORING_MODES = ('min', 'max', 'average', 'zero')
GRID = 56


@functools.partial(jax.jit, static_argnames=('model', 'mode'))
def _patch_scores(model: lspn.LSPN, mode: str, params: Any, theta: jax.Array, mu: jax.Array, img: jax.Array,
                  pcd: jax.Array, protos_img: jax.Array, protos_pcd: jax.Array, background: jax.Array) -> dict:
  rgb_dim = img.shape[-1]
  f = jnp.concatenate([img, pcd], -1)
  protos = jnp.concatenate([protos_img, protos_pcd], -1)
  sigma = lspn.global_scale(theta)

  def one(m):
    w, _ = model.apply({'params': params}, lspn.direction(f, m), m, deterministic=True)
    w = jnp.where(background[:, None], 1.0, w)  # SPEC §4.6.3: background patches keep w = (1, 1)
    return w, lspn.unified_score(lspn.modality_distances(f, m, rgb_dim), w, sigma, mu)

  w, l = jax.vmap(one, in_axes=1, out_axes=1)(protos)
  agg = {'min': lambda: l.min(1), 'max': lambda: l.max(1), 'average': lambda: l.mean(1), 'zero': lambda: l[:, 0]}
  return {'score': agg[mode](), 'unified': l, 'weights': w[:, 0]}


def patch_scores(state: 'FusionState', g2sf_config, img: np.ndarray, pcd: np.ndarray, protos_img: np.ndarray,
                 protos_pcd: np.ndarray, background: np.ndarray) -> dict:
  """Fused scores of N patches from their J nearest prototypes per modality (paired by rank, SPEC §4.1).

  img [N, D_R], pcd [N, D_P], protos_img [N, J, D_R], protos_pcd [N, J, D_P], background [N] bool. Returns
  {'score' [N] aggregated over J by `g2sf_config.scoring_mode`, 'unified' [N, J] l_j, 'weights' [N, 2] w_0}.
  """
  mode = g2sf_config.scoring_mode
  if mode not in SCORING_MODES:
    raise ValueError(f'g2sf.scoring_mode must be one of {SCORING_MODES}, got {mode!r}')
  return _patch_scores(lspn.from_config(g2sf_config), mode, state.lspn_params, jnp.asarray(state.theta),
                       jnp.asarray(state.mu), jnp.asarray(img, jnp.float32), jnp.asarray(pcd, jnp.float32),
                       jnp.asarray(protos_img, jnp.float32), jnp.asarray(protos_pcd, jnp.float32),
                       jnp.asarray(background, bool))


def _rows(bank: np.ndarray | memory_bank.ShardedBank, idx: np.ndarray) -> np.ndarray:
  """Coreset rows `idx [...]` → `[..., D]`, from a NumPy coreset or one placed with `memory_bank.place_bank`."""
  if isinstance(bank, memory_bank.ShardedBank):
    return np.asarray(bank.rows[jnp.asarray(idx)])
  return np.asarray(bank)[idx]


def score(state: 'FusionState', config, img: np.ndarray, pcd: np.ndarray, coresets: tuple, *,
          mesh: Mesh | None = None) -> dict:
  """G²SF result of one test sample (SPEC §4.6).

  img [h, w, D_R] IMG features normalised like the bank (h = 28 is nearest-upsampled to 56); pcd [56, 56, D_P] PCD
  features as in the bank (raw in the reference); coresets (img [K_R, D_R], pcd [K_P, D_P]) as NumPy arrays or as
  `memory_bank.place_bank` results (place them once per class). All 3136 patches are scored, background included.
  Returns {'image_score' float (max over patches), 'map56' [56,56], 'map224' [224,224] (bilinear + blur, before
  the test-set min–max), 'weights' [56,56,2] (the WEI_IMG, WEI_PCD diagnostics, w_0)}.
  """
  if img.shape[0] == GRID // 2:
    img = np.asarray(upsample_nearest2x(img[None]))[0]
  img = np.asarray(img, np.float32).reshape(GRID * GRID, -1)
  pcd = np.asarray(pcd, np.float32).reshape(GRID * GRID, -1)
  k = config.g2sf.anchor + 1
  _, idx_r = memory_bank.knn_search(img, coresets[0], k, mesh)
  _, idx_p = memory_bank.knn_search(pcd, coresets[1], k, mesh)
  out = patch_scores(state, config.g2sf, img, pcd, _rows(coresets[0], idx_r), _rows(coresets[1], idx_p),
                     pcd.sum(-1) == 0)
  patch = np.asarray(out['score'])
  return {'image_score': float(patch.max()), 'map56': patch.reshape(GRID, GRID),
          'map224': memory_bank.score_map(patch, config.scoring.blur, 224),
          'weights': np.asarray(out['weights']).reshape(GRID, GRID, 2)}
