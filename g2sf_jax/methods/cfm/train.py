"""CFM training (official `cfm_training.py`): the 2D→3D and 3D→2D mapping networks of one class.

One Adam (PyTorch defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay) over both networks; batches of
`cfm.batch_size` training images, shuffled each epoch from the run's seed (the reference seeds 115); `cfm.epochs`
epochs (50, the training script's default; its evaluation script loads 250-epoch checkpoints). Per batch:
`L = (1 − cos(f₂→₃(rgb), pcd)) + (1 − cos(f₃→₂(pcd), rgb))`, each cosine (eps 1e-6) averaged over every
non-background pixel of the whole batch; each network only receives its own term's gradient, as in the
reference's two backward passes. Rows are sharded over the mesh (data parallel), the parameters replicated.
"""
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from g2sf_jax import checkpoints, distributed
from g2sf_jax.errors import require_finite
from g2sf_jax.methods.cfm import mlp as cfm_mlp


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
  """torch `CosineSimilarity(dim=-1, eps)`: a·b / max(‖a‖·‖b‖, eps)."""
  dot = jnp.sum(a * b, -1)
  return dot / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)


def losses(params: dict, rgb: jax.Array, pcd: jax.Array, keep: jax.Array) -> dict:
  """rgb [N, Dr], pcd [N, Dp] pixel rows, keep [N] bool → {'2d_to_3d', '3d_to_2d'} (each 1 − mean cosine)."""
  pcd_pred = cfm_mlp.FeatureProjectionMLP(pcd.shape[-1]).apply({'params': params['2d_to_3d']}, rgb)
  rgb_pred = cfm_mlp.FeatureProjectionMLP(rgb.shape[-1]).apply({'params': params['3d_to_2d']}, pcd)
  count = jnp.maximum(jnp.sum(keep), 1)
  mean = lambda x: jnp.sum(jnp.where(keep, x, 0.0)) / count
  return {'2d_to_3d': 1 - mean(cosine(pcd_pred, pcd)), '3d_to_2d': 1 - mean(cosine(rgb_pred, rgb))}


def init_params(key: jax.Array, rgb_dim: int, point_dim: int) -> dict:
  k23, k32 = jax.random.split(key)
  return {'2d_to_3d': cfm_mlp.init_params(cfm_mlp.FeatureProjectionMLP(point_dim), k23, rgb_dim),
          '3d_to_2d': cfm_mlp.init_params(cfm_mlp.FeatureProjectionMLP(rgb_dim), k32, point_dim)}


def make_step(lr: float, mesh: Mesh):
  """The jitted update: rows sharded over `mesh`, parameters and optimizer state replicated."""
  tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
  rep, rows = distributed.replicated(mesh), distributed.row_sharded(mesh)

  def step(params, opt_state, rgb, pcd, keep):
    def objective(p):
      terms = losses(p, rgb, pcd, keep)
      return terms['2d_to_3d'] + terms['3d_to_2d'], terms
    (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, terms

  return jax.jit(step, in_shardings=(rep, rep, rows, rows, rows), out_shardings=(rep, rep, rep),
                 donate_argnums=(0, 1)), tx


def train(config: ml_collections.ConfigDict, num_samples: int, batch_rows: Callable[[np.ndarray], tuple],
          rgb_dim: int, point_dim: int, out_dir: Path, key: jax.Array, *, mesh: Mesh,
          log: Callable[[str], None] = logging.info) -> Any:
  """Trains (or resumes) one class's two networks; returns their params.

  `batch_rows(sample_indices)` gives `(rgb [n, P, Dr], pcd [n, P, Dp], background [n, P])` for those training
  samples. The state is saved after each epoch (`out_dir/state`); a resumed run continues the same run.
  """
  c = config.cfm
  step, tx = make_step(c.lr, mesh)
  params = init_params(key, rgb_dim, point_dim)
  opt_state = tx.init(params)
  start = 0
  seed = np.asarray(jax.random.key_data(key)).tolist()
  state_dir = out_dir / 'state'
  if checkpoints.exists(state_dir):
    saved, meta = checkpoints.load(state_dir)
    if meta.get('key') != seed or meta.get('samples') != num_samples:
      raise ValueError(f'{state_dir} was made for other data ({meta}); remove it to retrain')
    leaves = [saved['opt'][f'{i:04d}'] for i in range(len(jax.tree.leaves(opt_state)))]
    params, opt_state = saved['params'], jax.tree.unflatten(jax.tree.structure(opt_state), leaves)
    start = meta['epoch']
    log(f'CFM training: resuming at epoch {start}')
  params, opt_state = jax.device_put((params, opt_state), distributed.replicated(mesh))
  for epoch in range(start, c.epochs):
    order = np.random.default_rng([*seed, epoch]).permutation(num_samples)
    batches = range(0, num_samples, c.batch_size)
    steps = distributed.StepOutputs()  # the losses read once per epoch: the next batch is read during this step
    for first in batches:
      idx = order[first:first + c.batch_size]
      rgb, pcd, bg = batch_rows(idx)
      pad = c.batch_size - len(idx)  # the last, smaller batch: padded with excluded rows (one compiled shape)
      if pad:
        rgb, pcd = (np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) for x in (rgb, pcd))
        bg = np.concatenate([bg, np.ones((pad,) + bg.shape[1:], bool)])
      # Zero padding rows are excluded (keep False), so any device count divides the batch.
      flat = tuple(distributed.shard_rows(x, mesh) for x in (rgb.reshape(-1, rgb.shape[-1]),
                                                             pcd.reshape(-1, pcd.shape[-1]), ~bg.reshape(-1)))
      params, opt_state, terms = step(params, opt_state, *flat)
      steps.append(terms)
    sums = {'2d_to_3d': 0.0, '3d_to_2d': 0.0}
    for terms in steps.fetch():
      for k in sums:
        sums[k] += float(terms[k]) / len(batches)
    require_finite(f'the CFM training losses of epoch {epoch + 1} ({sums})', *sums.values())
    leaves = jax.tree.leaves(opt_state)
    checkpoints.save(state_dir, {'params': params, 'opt': {f'{i:04d}': x for i, x in enumerate(leaves)}},
                     {'key': seed, 'samples': num_samples, 'epoch': epoch + 1})
    if (epoch + 1) % max(1, c.epochs // 10) == 0 or epoch + 1 == c.epochs:
      log(f'CFM epoch {epoch + 1}/{c.epochs}: loss 2D→3D {sums["2d_to_3d"]:.4f}, 3D→2D {sums["3d_to_2d"]:.4f}')
  return jax.device_get(params)
