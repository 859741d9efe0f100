"""G²SF scoring of test samples with a trained LSPN and global scale (algorithms.md §4.6)."""
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax import features, memory_bank
from g2sf_jax.methods.g2sf import lspn

if TYPE_CHECKING:
  from g2sf_jax.methods.g2sf.train import FusionState

SCORING_MODES = ('min', 'max', 'average', 'zero')


@functools.partial(jax.jit, static_argnames=('model', 'mode'))
def _patch_scores(model: lspn.LSPN, mode: str, params: Any, theta: jax.Array, mu: jax.Array, img: jax.Array,
                  pcd: jax.Array, protos_img: jax.Array, protos_pcd: jax.Array, background: jax.Array) -> dict:
  rgb_dim = img.shape[-1]
  f = jnp.concatenate([img, pcd], -1)
  protos = jnp.concatenate([protos_img, protos_pcd], -1)
  sigma = lspn.global_scale(theta)

  def one(m):
    w, _ = model.apply({'params': params}, lspn.direction(f, m), m, deterministic=True)
    w = jnp.where(background[:, None], 1.0, w)  # algorithms.md §4.6.3: background patches keep w = (1, 1)
    return w, lspn.unified_score(lspn.modality_distances(f, m, rgb_dim), w, sigma, mu)

  w, unified = jax.vmap(one, in_axes=1, out_axes=1)(protos)
  agg = {'min': lambda: unified.min(1), 'max': lambda: unified.max(1), 'average': lambda: unified.mean(1),
         'zero': lambda: unified[:, 0]}
  return {'score': agg[mode](), 'unified': unified, 'weights': w[:, 0]}


def fused_patch_scores(model: lspn.LSPN, mode: str, params: Any, theta: jax.Array, mu: jax.Array, img: jax.Array,
                       pcd: jax.Array, protos_img: jax.Array, protos_pcd: jax.Array) -> jax.Array:
  """The fused score of N patches, traceable (a scorer's `apply`): img [N, D_R] normalised like the bank, pcd
  [N, D_P], their J nearest prototypes per modality paired by rank → [N] aggregated by `mode`. Background patches
  (all-zero point features, the reference's `PCD.sum(1) == 0`) keep w = (1, 1) (algorithms.md §4.6.3)."""
  background = jnp.sum(pcd, axis=-1) == 0
  return _patch_scores(model, mode, params, theta, mu, img, pcd, protos_img, protos_pcd, background)['score']


def patch_scores(state: 'FusionState', g2sf_config, img: np.ndarray, pcd: np.ndarray, protos_img: np.ndarray,
                 protos_pcd: np.ndarray, background: np.ndarray) -> dict:
  """Fused scores of N patches from their J nearest prototypes per modality (paired by rank, algorithms.md §4.1).

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


def score(state: 'FusionState', config, img: np.ndarray, pcd: np.ndarray,
          coresets: tuple[memory_bank.ShardedBank, memory_bank.ShardedBank],
          anchors: tuple[np.ndarray, np.ndarray]) -> dict:
  """G²SF result of one test sample (algorithms.md §4.6), from the anchors its unimodal search already found.

  img [3136, D_R] IMG features normalised like the bank on the 56×56 grid; pcd [3136, D_P] PCD features as in the
  bank (raw in the reference); coresets: the banks placed with `memory_bank.place_bank`; anchors (img [3136, J'],
  pcd [3136, J']): each patch's nearest coreset rows per modality, ascending (J' ≥ anchor + 1; the search of the
  IMG/PCD rows, algorithms.md §3.3, keeps 20). All 3136 patches are scored, background included.
  Returns {'image_score' float (max over patches), 'map56' [56,56], 'map224' [224,224] (bilinear + blur, before
  the test-set min–max), 'weights' [56,56,2] (the WEI_IMG, WEI_PCD diagnostics, w_0)}.
  """
  k = config.g2sf.anchor + 1
  if min(a.shape[1] for a in anchors) < k:
    raise ValueError(f'G²SF needs the {k} nearest prototypes per modality (g2sf.anchor + 1), the search kept '
                     f'{min(a.shape[1] for a in anchors)}; raise memory_bank.num_anchors')
  img = np.asarray(img, np.float32)
  pcd = np.asarray(pcd, np.float32)
  out = patch_scores(state, config.g2sf, img, pcd, memory_bank.bank_rows(coresets[0], anchors[0][:, :k]),
                     memory_bank.bank_rows(coresets[1], anchors[1][:, :k]), features.background_mask(pcd))
  patch = np.asarray(out['score'])
  return {'image_score': float(patch.max()), 'map56': patch.reshape(features.GRID, features.GRID),
          'map224': memory_bank.score_map(patch, config.scoring.blur, 224),
          'weights': np.asarray(out['weights']).reshape(features.GRID, features.GRID, 2)}
