"""M3DM's Unsupervised Feature Fusion: its training rows, the patch-wise InfoNCE loss and the training loop.

As the official code (nomewang/M3DM `fusion_pretrain.py`, `engine_fusion_pretrain.py`, `models/feature_fusion.py`):
* Training rows: every training sample of every class of the run, its 56×56 point patches `[point ; rgb]` with the
  RGB patch features of the 28×28 grid expanded to 56×56. The stored training files pair them scrambled (row k
  takes RGB patch (4·(k mod 784) + k div 784) mod 784); test time pairs them aligned. `m3dm.uff_pairing` switches.
* A patch takes part iff its point feature has no exact zero (`m3dm.uff_keep='reference'`; 'foreground' for
  histogram features with empty bins); the loss is one-directional: each RGB query against
  every kept point key of the micro-batch (all its samples), `CrossEntropy(q·kᵀ/T) · 2T`, T = 1.
* AdamW (decoupled weight decay 0.01 on every parameter: the script ignores `--weight_decay`), betas (0.9, 0.95);
  micro-batches of `batch_size` samples, gradients accumulated over `accum` of them (the loss divided by accum).
* Schedule `paper` (default, as the issue and the paper state: `steps` updates, linear warm-up from 0 over
  `warmup_steps`, then cosine to 0) or `code` (the script: `epochs` passes, warm-up over the first epoch, the
  rate set at the first micro-batch of each accumulation window, an epoch's incomplete window dropped). Both give
  the first update a learning rate of exactly 0. Float32 throughout (the script uses fp16 autocast).

Data parallel: each micro-batch's rows are sharded over the mesh, the parameters replicated; the loss still sees
every key of the micro-batch.
"""
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from g2sf_jax import checkpoints, distributed, features, io
from g2sf_jax.errors import DataError, require_finite
from g2sf_jax.methods.m3dm import uff_net as uff_model

_ROWS, _META = 'rows.npy', 'rows.json'


def scrambled_rgb_index(grid: int = 56) -> np.ndarray:
  """[grid²] indices into the (grid/2)² RGB patches that the reference's training files pair with point patch k."""
  n = (grid // 2) ** 2
  k = np.arange(grid * grid)
  return (4 * (k % n) + k // n) % n


def aligned_rgb_index(grid: int = 56) -> np.ndarray:
  """[grid²] indices into the (grid/2)² RGB patches under point patch k (nearest 2× upsampling, algorithms.md §2.5)."""
  k = np.arange(grid * grid)
  return (k // grid // 2) * (grid // 2) + (k % grid) // 2


def kept(point: np.ndarray, rule: str) -> np.ndarray:
  """Which patches [P, Dp] take part: 'reference' = no exact zero in the point feature (PointMAE's background);
  'foreground' = not all zero (for histogram features such as FPFH, whose empty bins are exact zeros)."""
  return np.all(point != 0, axis=1) if rule == 'reference' else np.any(point != 0, axis=1)


def sample_rows(img: np.ndarray, pcd: np.ndarray, pairing: str, rule: str = 'reference') -> np.ndarray:
  """One sample's training rows `[kept, Dp + Dr]` (point first) from img [h, w, Dr] and pcd [56, 56, Dp]."""
  point = pcd.reshape(-1, pcd.shape[-1])
  rgb = img.reshape(-1, img.shape[-1])
  if img.shape[0] == pcd.shape[0]:
    paired = rgb
  else:
    paired = rgb[scrambled_rgb_index(pcd.shape[0]) if pairing == 'reference' else aligned_rgb_index(pcd.shape[0])]
  keep = kept(point, rule)
  return np.concatenate([point[keep], paired[keep]], axis=1).astype(np.float32)


def pack(out_dir: Path, classes: Sequence[str], load: Callable[[str], dict], pairing: str,
         rule: str = 'reference') -> dict:
  """Every class's training rows into one memory-mapped `rows.npy` [M, Dp + Dr] with per-sample `offsets.npy`.

  `load(class)` returns that class's train features (`features.load_cached`). Two passes (count, then fill), one
  class in memory at a time; written atomically, so an interrupted pack is redone.
  """
  meta_path = out_dir / _META
  if meta_path.is_file():
    return json.loads(meta_path.read_text())
  counts, dims = [], None
  for name in classes:
    f = load(name)
    counts += [int(kept(p.reshape(-1, p.shape[-1]), rule).sum()) for p in f['pcd']]
    dims = (f['pcd'].shape[-1], f['img'].shape[-1])
  if sum(counts) == 0:
    raise DataError(f'UFF training: no training patch passes m3dm.uff_keep={rule!r} (its point features all have '
                    "an exact zero: histogram features such as FPFH need m3dm.uff_keep='foreground')")
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  with io.atomic_write(out_dir / _ROWS) as handle:
    rows = np.lib.format.open_memmap(handle.name, mode='w+', dtype=np.float32, shape=(int(offsets[-1]), sum(dims)))
    i = 0
    for name in classes:
      f = load(name)
      for img, pcd in zip(f['img'], f['pcd']):
        rows[offsets[i]:offsets[i + 1]] = sample_rows(img, pcd, pairing, rule)
        i += 1
    rows.flush()
    del rows
  io.save_npz_atomic(out_dir / 'offsets.npz', offsets=offsets)
  meta = {'samples': len(counts), 'rows': int(offsets[-1]), 'point_dim': dims[0], 'rgb_dim': dims[1]}
  with io.atomic_write(meta_path, 'w') as f:
    json.dump(meta, f)
  return meta


def contrastive_loss(q: jax.Array, k: jax.Array, keep: jax.Array, temperature: float = 1.0) -> jax.Array:
  """M3DM's patch InfoNCE: `q, k [N, E]`, keep [N] bool (padding and patches with a zero point feature are out).

  Each kept RGB query's positive is the point key of its own row, its negatives every other kept key:
  `2T · mean_i CE(softmax_j (q̂_i · k̂_j / T), i)` with q̂, k̂ L2-normalised (eps 1e-12, as `F.normalize`).
  """
  qn = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  kn = k / jnp.maximum(jnp.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  logits = jnp.dot(qn, kn.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(keep[None, :], logits, -jnp.inf)
  per_row = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
  return 2 * temperature * jnp.sum(jnp.where(keep, per_row, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


def learning_rate(c: ml_collections.ConfigDict, update: int, epoch: int, window_start: int, steps_per_epoch: int):
  """The schedule (module docstring): `paper` by the update index, `code` by the epoch position of the window."""
  if c.schedule == 'paper':
    if update < c.warmup_steps:
      return c.lr * update / c.warmup_steps
    return 0.5 * c.lr * (1 + math.cos(math.pi * (update - c.warmup_steps) / max(c.steps - c.warmup_steps, 1)))
  t = window_start / steps_per_epoch + epoch
  if t < c.warmup_epochs:
    return c.lr * t / c.warmup_epochs
  return 0.5 * c.lr * (1 + math.cos(math.pi * (t - c.warmup_epochs) / max(c.epochs - c.warmup_epochs, 1)))


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """torch AdamW: decoupled decay scaled by the learning rate (injected per update)."""
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=c.betas[0], b2=c.betas[1], eps=1e-8,
                                               weight_decay=c.weight_decay)


def _bucket(n: int, multiple: int) -> int:
  """Rows of a micro-batch padded up to 1/8-octave steps (few compilations), a multiple of the device count."""
  size = max(256, 2 ** math.ceil(math.log2(max(n, 1))))
  step = max(size // 8, 1)
  size = -(-n // step) * step
  return -(-size // multiple) * multiple


def _steps(c: ml_collections.ConfigDict, mesh: Mesh):
  """Jitted (loss and gradient of one micro-batch, rows sharded over the mesh; the optimizer update).

  Cached per (config, mesh), so every train call of a process compiles once per micro-batch size.
  """
  return _cached_steps(ml_collections.FrozenConfigDict(c), mesh)


@functools.lru_cache(maxsize=4)
def _cached_steps(c: ml_collections.FrozenConfigDict, mesh: Mesh):
  model = uff_model.UFF()
  rep, rows_sh = distributed.replicated(mesh), distributed.row_sharded(mesh)
  tx = make_optimizer(c)

  def loss_and_grad(params, point, rgb, keep, scale):
    def objective(p):
      _, inter = model.apply({'params': p}, point, rgb)
      return contrastive_loss(inter['q'], inter['k'], keep, c.temperature) * scale
    return jax.value_and_grad(objective)(params)

  def apply(params, opt_state, grads, lr):
    opt_state.hyperparams['learning_rate'] = lr
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  grad = jax.jit(loss_and_grad, in_shardings=(rep, rows_sh, rows_sh, rows_sh, rep), out_shardings=(rep, rep))
  return grad, jax.jit(apply, donate_argnums=(0, 1)), tx


def train(config: ml_collections.ConfigDict, rows: np.ndarray, offsets: np.ndarray, point_dim: int, out_dir: Path,
          key: jax.Array, *, mesh: Mesh, log: Callable[[str], None] = logging.info) -> Any:
  """Trains the UFF on the packed rows (`pack`) and returns its params; resumes from `out_dir/state`.

  rows [M, Dp + Dr] float32 (memmap), offsets [S + 1]: sample s owns rows offsets[s]:offsets[s+1]. The state is
  saved after every pass over the samples (with a partly accumulated window), so a resumed run is the same run.
  """
  c = config.m3dm.uff
  num_samples = len(offsets) - 1
  if num_samples < c.batch_size:
    raise DataError(f'UFF training: {num_samples} training samples, fewer than m3dm.uff.batch_size={c.batch_size}')
  grad_fn, apply, tx = _steps(c, mesh)
  params = uff_model.init_params(uff_model.UFF(), key, point_dim, rows.shape[1] - point_dim)
  opt_state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads_sum, window, update, epoch, lr = zeros, 0, 0, 0, 0.0
  steps_per_epoch = num_samples // c.batch_size  # micro-batches (the reference's loader drops the last)
  total = c.steps if c.schedule == 'paper' else c.epochs * (steps_per_epoch // c.accum)
  if total == 0:  # else the UFF would stay at its random initialisation without a word
    raise DataError(f"UFF training: m3dm.uff.schedule='code' makes no update: {num_samples} samples give "
                    f'{steps_per_epoch} micro-batches of m3dm.uff.batch_size={c.batch_size} per epoch, fewer than '
                    f'm3dm.uff.accum={c.accum}; lower batch_size or accum (or use the paper schedule)')
  seed = np.asarray(jax.random.key_data(key)).tolist()
  state_dir = out_dir / 'state'
  meta_common = {'samples': num_samples, 'rows': int(rows.shape[0]), 'key': seed}
  if checkpoints.exists(state_dir):
    saved, meta = checkpoints.load(state_dir)
    if {k: meta.get(k) for k in meta_common} != meta_common:
      raise ValueError(f'{state_dir} was made for other data ({meta}); remove it to retrain')
    opt_leaves = [saved['opt'][f'{i:04d}'] for i in range(len(jax.tree.leaves(opt_state)))]
    params, grads_sum = saved['params'], saved['grads']
    opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), opt_leaves)
    update, epoch, window, lr = meta['update'], meta['epoch'], meta['window'], meta['lr']
    log(f'UFF training: resuming at update {update} (epoch {epoch})')
  params, opt_state, zeros, grads_sum = jax.device_put((params, opt_state, zeros, grads_sum),
                                                       distributed.replicated(mesh))
  rows_sh = distributed.row_sharded(mesh)
  while update < total:
    in_flight = distributed.StepOutputs()  # without a read per step, bounds the batches queued on the device
    order = np.random.default_rng([*seed, epoch]).permutation(num_samples)
    if c.schedule == 'code':  # the reference's zero_grad at each epoch start drops an incomplete window
      grads_sum, window = zeros, 0
    for step in range(steps_per_epoch):
      if update >= total:
        break
      if window == 0:
        lr = learning_rate(c, update, epoch, step, steps_per_epoch)
      batch = np.concatenate([rows[offsets[s]:offsets[s + 1]] for s in order[step * c.batch_size:
                                                                               (step + 1) * c.batch_size]])
      n = _bucket(len(batch), mesh.size)
      keep = np.arange(n) < len(batch)
      batch = np.concatenate([batch, np.zeros((n - len(batch), batch.shape[1]), np.float32)])
      point, rgb, keep = jax.device_put((batch[:, :point_dim], batch[:, point_dim:], keep), rows_sh)
      loss, grads = grad_fn(params, point, rgb, keep, np.float32(1 / c.accum))
      in_flight.append(loss)
      grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
      window += 1
      if window == c.accum:
        params, opt_state = apply(params, opt_state, grads_sum, jnp.float32(lr))
        grads_sum, window, update = zeros, 0, update + 1
        if update % max(1, total // 20) == 0 or update == total:
          log(f'UFF update {update}/{total}: lr {lr:.3g}, micro-batch loss {float(loss) * c.accum:.4f}')
    epoch += 1
    require_finite(f'the UFF weights after epoch {epoch}', *jax.tree.leaves(jax.device_get(params)))
    opt_leaves = jax.tree.leaves(opt_state)
    checkpoints.save(state_dir, {'params': params, 'grads': grads_sum,
                                 'opt': {f'{i:04d}': x for i, x in enumerate(opt_leaves)}},
                     dict(meta_common, update=update, epoch=epoch, window=window, lr=float(lr)))
  return jax.device_get(params)


def fuse_rows(params: Any, rgb: jax.Array, point: jax.Array) -> jax.Array:
  """Test-time fused features of aligned rows, traceable: rgb [R, Dr], point [R, Dp] → [R, Dp + Dr]."""
  return uff_model.UFF().apply({'params': params}, point, rgb)[0]


def fuse(params: Any, img: np.ndarray, pcd: np.ndarray, chunk: int = 3136 * 4) -> np.ndarray:
  """Test-time fused patch features: img [N, h, w, Dr], pcd [N, 56, 56, Dp] → [N, 3136, Dp + Dr], aligned pairs."""
  img56 = features.to_grid(img)
  n = pcd.shape[0]
  point = pcd.reshape(-1, pcd.shape[-1])
  rgb = img56.reshape(-1, img56.shape[-1])
  out = [np.asarray(_fuse(params, point[i:i + chunk], rgb[i:i + chunk])) for i in range(0, len(point), chunk)]
  return np.concatenate(out).reshape(n, features.GRID * features.GRID, -1)


@jax.jit
def _fuse(params, point, rgb):
  return uff_model.UFF().apply({'params': params}, point, rgb)[0]
