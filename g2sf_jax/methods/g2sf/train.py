"""LSPN + global-scale training on the synthetic fusion dataset (algorithms.md §4.5).

Data parallel: the jitted step takes the batch sharded over the device mesh and everything else replicated, so the
losses that mix rows (L_mar's max/min, L_cma's permutations, L_cns's B×B broadcast) see the whole global batch. The
batch size does not depend on the device count: a batch the mesh does not divide (the data-limited batch of a small
dataset) is replicated instead, so every device count trains on the same batches.

Randomness: the split and the balanced samplers use `numpy.random.Generator`s seeded from (key, purpose, epoch); the
step's noise, permutations and dropout use `fold_in(key, epoch, step)`. A resumed run therefore continues exactly
where the saved epoch ended.

On disk (`workdir`): `state/` (params, optimiser state and counters after the last finished epoch) and `best/` (the
LSPN, θ and μ of the best validation epoch), both atomic orbax checkpoints (g2sf_jax/checkpoints.py).
"""
import dataclasses
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from g2sf_jax import checkpoints, distributed
from g2sf_jax.errors import DataError, require_finite
from g2sf_jax.methods.g2sf import losses
from g2sf_jax.methods.g2sf import lspn

if TYPE_CHECKING:
  from g2sf_jax.methods.g2sf.dataset import FusionData

@dataclasses.dataclass(frozen=True)
class FusionState:
  """What inference needs: LSPN params, θ [2], μ [2] (`score_mean.npy`), plus the training bookkeeping."""
  lspn_params: Any
  theta: np.ndarray
  mu: np.ndarray
  margin: float
  best_val: float
  epoch: int


def make_optimizer(g2sf_config) -> optax.GradientTransformation:
  """Torch `Adam(weight_decay)` (L2 added to the gradient) for the LSPN and, with its own lr, for θ (algorithms.md
  §4.5c.6)."""
  c = g2sf_config
  adam = lambda lr: optax.chain(optax.add_decayed_weights(c.weight_decay), optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))
  labels = lambda p: {'lspn': jax.tree.map(lambda _: 'lspn', p['lspn']), 'theta': 'theta'}
  return optax.multi_transform({'lspn': adam(c.lr), 'theta': adam(c.lr_scale)}, labels)


def batch_size(num_rows: int, requested: int) -> int:
  """`min(int(0.7·M)//20, batch_size)` (algorithms.md §4.5a)."""
  b = min(int(0.7 * num_rows) // 20, requested)
  if b < 2:
    raise DataError(f'fusion dataset too small: {num_rows} rows give a batch of {b} (at least 2 needed)')
  return b


def batch_sharding(batch: int, mesh: Mesh) -> NamedSharding:
  """Rows split over the mesh when it divides the batch; otherwise the batch is replicated: every device then
  computes the whole step, which gives the one-device result without the speed-up."""
  return distributed.row_sharded(mesh) if batch % mesh.size == 0 else distributed.replicated(mesh)


def split(num_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Seeded 50/50 row split (torch `random_split` lengths: the first part gets the odd row)."""
  perm = rng.permutation(num_rows)
  n_train = num_rows - num_rows // 2
  return perm[:n_train], perm[n_train:]


def balanced_batches(rows: np.ndarray, labels: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
  """`WeightedRandomSampler` (weight 1/class count, len(rows) draws with replacement) + drop_last: [steps, batch]."""
  lab = labels[rows]
  counts = np.bincount(lab, minlength=2)
  if np.any(counts == 0):
    raise DataError(f'a fusion split has no {"normal" if counts[0] == 0 else "anomalous"} rows')
  p = 1.0 / counts[lab]
  draws = rng.choice(rows, size=len(rows), replace=True, p=p / p.sum())
  steps = len(rows) // batch
  return draws[:steps * batch].reshape(steps, batch)


def constants(data: 'FusionData', batches_mu: np.ndarray, batches_m: np.ndarray) -> tuple[np.ndarray, float]:
  """μ = mean over batches of the normal rows' mean raw score; M_s = 2·max over batches of anomalous score/μ (§4.5b)."""
  mus = []
  for b in batches_mu:
    s, normal = data.score[b], data.label[b] == 0
    mus.append(s[normal].mean(0) if normal.any() else np.full(2, np.nan))
  mu = np.nanmean(np.stack(mus), 0).astype(np.float32)
  m = max(float((data.score[b][data.label[b] == 1] / mu).max(initial=-np.inf)) for b in batches_m)
  return mu, 2.0 * m


def _rng(key: jax.Array, *path: int) -> np.random.Generator:
  return np.random.default_rng([*np.asarray(jax.random.key_data(key)).tolist(), *path])


def _add_noise(key: jax.Array, x: jax.Array, mu: jax.Array, rgb_dim: int) -> jax.Array:
  """`x += u/‖u‖·r` per modality, `u ~ U[0,1)^D` (non-negative), `r ~ U[0, 0.1·μ^m)` per row (algorithms.md §4.5c.2)."""
  parts = []
  for i, (sl, k) in enumerate(zip((slice(None, rgb_dim), slice(rgb_dim, None)), jax.random.split(key, 2))):
    ku, kr = jax.random.split(k)
    xm = x[:, sl]
    u = jax.random.uniform(ku, xm.shape)
    r = jax.random.uniform(kr, (x.shape[0], 1), maxval=0.1 * mu[i])
    parts.append(xm + u / jnp.linalg.norm(u, axis=-1, keepdims=True) * r)
  return jnp.concatenate(parts, -1)


def _prototypes(coresets: tuple[jax.Array, jax.Array], anchor_idx: jax.Array, ranks: int) -> jax.Array:
  """`m_j = [coreset_R[idxR[:,j]] ; coreset_P[idxP[:,j]]]` for j < ranks: [B, ranks, D_R + D_P].

  `anchor_idx [B, 2A]` holds A IMG anchors, then A PCD anchors (`FusionData.anchor_idx`).
  """
  cols = anchor_idx.shape[1] // 2
  img = jnp.take(coresets[0], anchor_idx[:, :ranks], axis=0)
  pcd = jnp.take(coresets[1], anchor_idx[:, cols:cols + ranks], axis=0)
  return jnp.concatenate([img, pcd], -1)


def loss_terms(model: lspn.LSPN, params: Any, batch: dict, coresets, mu: jax.Array, margin: jax.Array,
               key: jax.Array, g2sf_config) -> dict:
  """The six loss terms of one training step, 12 LSPN forwards with fresh dropout masks (algorithms.md §4.5c)."""
  c = g2sf_config
  rgb_dim = coresets[0].shape[1]
  anchor = c.anchor
  normal = batch['normal']
  k_nf, k_nm, k_perm, k_drop = jax.random.split(key, 4)
  drop_keys = jax.random.split(k_drop, 2 + 2 * anchor)
  protos = _prototypes(coresets, batch['anchor_idx'], 2 * anchor + 1)
  f = _add_noise(k_nf, batch['feature'], mu, rgb_dim)
  m0 = _add_noise(k_nm, protos[:, 0], mu, rgb_dim)
  sigma = lspn.global_scale(params['theta'])

  def forward(f, m, k):
    w, _ = model.apply({'params': params['lspn']}, lspn.direction(f, m), m, deterministic=False,
                       rngs={'dropout': k})
    dist = lspn.modality_distances(f, m, rgb_dim) / mu
    return w, dist, lspn.unified_score(dist, w, sigma, jnp.ones(2))

  w0, s0, l0 = forward(f, m0, drop_keys[0])
  d2 = l0 ** 2

  b = f.shape[0]
  h = b // 2
  kp = jax.random.split(k_perm, 4)
  f_mis = jnp.concatenate([
      jnp.concatenate([f[:h, :rgb_dim][jax.random.permutation(kp[0], h)],
                       f[:h, rgb_dim:][jax.random.permutation(kp[1], h)]], -1), f[h:]])
  m_mis = jnp.concatenate([m0[:h], jnp.concatenate([
      m0[h:, :rgb_dim][jax.random.permutation(kp[2], b - h)],
      m0[h:, rgb_dim:][jax.random.permutation(kp[3], b - h)]], -1)])
  w_mis, _, _ = forward(f_mis, m_mis, drop_keys[1])

  others = jnp.moveaxis(protos[:, 1:], 1, 0)
  _, s_j, l_j = jax.vmap(lambda m, k: forward(f, m, k))(others, drop_keys[2:])
  return {
      'separation': losses.separation(d2, normal, margin, c.alpha, weighted=True),
      'margin': losses.margin(d2, normal),
      'scaling': losses.scaling(w0, normal),
      'alignment': losses.alignment(w_mis),
      'consistency': losses.consistency(l0, s0.mean(-1), l_j[:anchor], s_j[:anchor].mean(-1), l_j[anchor:],
                                        c.magnitude, c.consistency),
      'l1': losses.l1(params['lspn']),
  }


def val_terms(model: lspn.LSPN, params: Any, batch: dict, coresets, mu: jax.Array, margin: jax.Array) -> dict:
  """Validation (algorithms.md §4.5d): eval mode, no noise, only m_0; unweighted L_sep and L_mar, plus l_0 for the
  AUROC."""
  rgb_dim = coresets[0].shape[1]
  f = batch['feature']
  m0 = _prototypes(coresets, batch['anchor_idx'], 1)[:, 0]
  w, _ = model.apply({'params': params['lspn']}, lspn.direction(f, m0), m0, deterministic=True)
  l0 = lspn.unified_score(lspn.modality_distances(f, m0, rgb_dim), w, lspn.global_scale(params['theta']), mu)
  d2 = l0 ** 2
  return {'separation': losses.separation(d2, batch['normal'], margin, weighted=False),
          'margin': losses.margin(d2, batch['normal']), 'score': l0}


def make_steps(g2sf_config, mesh: Mesh, rows: NamedSharding | None = None, gather: bool = False):
  """Jitted (train_step, val_step, optimizer): the batch laid out as `rows` (default: sharded over the mesh axis, see
  `batch_sharding`), everything else replicated.

  The steps take the batch as `{'feature', 'anchor_idx', 'normal'}`; with `gather=True` they take instead the whole
  fusion table (those three over all M rows, replicated) and the batch's row indices `[B]` int32 laid out as `rows`,
  and gather the batch on the device (`_table_on_device`). Cached per (config, mesh, rows, gather), so classes
  trained in one process share the compiled steps where their shapes agree (the batch; with `gather`, also the
  table's row count, which differs between classes).
  """
  return _make_steps(ml_collections.FrozenConfigDict(g2sf_config), mesh, rows or distributed.row_sharded(mesh), gather)


@functools.lru_cache(maxsize=4)
def _make_steps(c: ml_collections.FrozenConfigDict, mesh: Mesh, rows: NamedSharding, gather: bool):
  model = lspn.from_config(c)
  tx = make_optimizer(c)
  rep = distributed.replicated(mesh)
  batch_sh = {'feature': rows, 'anchor_idx': rows, 'normal': rows}

  def train_step(params, opt_state, batch, coresets, mu, margin, key):
    def objective(p):
      terms = loss_terms(model, p, batch, coresets, mu, margin, key, c)
      return losses.total(terms, c), terms
    (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(terms, loss=loss)

  val_step = functools.partial(val_terms, model)
  if not gather:
    train = jax.jit(train_step, in_shardings=(rep, rep, batch_sh, rep, rep, rep, rep),
                    out_shardings=(rep, rep, rep), donate_argnums=(0, 1))
    val = jax.jit(val_step, in_shardings=(rep, batch_sh, rep, rep, rep), out_shardings=rep)
    return train, val, tx

  def take(table, idx):
    batch = {k: jnp.take(x, idx, axis=0) for k, x in table.items()}
    return jax.lax.with_sharding_constraint(batch, batch_sh)

  train = jax.jit(lambda params, opt_state, table, idx, *rest: train_step(params, opt_state, take(table, idx), *rest),
                  in_shardings=(rep, rep, rep, rows, rep, rep, rep, rep), out_shardings=(rep, rep, rep),
                  donate_argnums=(0, 1))
  val = jax.jit(lambda params, table, idx, *rest: val_step(params, take(table, idx), *rest),
                in_shardings=(rep, rep, rows, rep, rep, rep), out_shardings=rep)
  return train, val, tx


def init_params(config, key: jax.Array, feature_dim: int) -> dict:
  """{'lspn': LSPN params, 'theta': zeros [2]} (σ starts at (0.5, 0.5))."""
  return {'lspn': lspn.init_params(lspn.from_config(config.g2sf), key, feature_dim), 'theta': jnp.zeros(2, jnp.float32)}


def _host_batch(data: 'FusionData', rows: np.ndarray) -> dict:
  return {'feature': np.asarray(data.feature[np.sort(rows)], np.float32)[np.argsort(np.argsort(rows))],
          'anchor_idx': np.asarray(data.anchor_idx[rows], np.int32),
          'normal': np.asarray(data.label[rows] == 0)}


def _table_on_device(data: 'FusionData', mesh: Mesh, on_device: bool | None) -> dict | None:
  """The whole fusion table (features, anchors, normal flags) replicated on the mesh, when `on_device` says so or,
  for None, when it fits on an accelerator (`distributed.fits_on_devices`): each step then receives B row indices
  instead of B feature rows read from the memory-mapped file on the host (~24 ms for 8,192 of 1,920 columns here,
  plus their copy to the device). None otherwise: the batches come from the host."""
  nbytes = data.feature.size * 4 + data.anchor_idx.size * 4 + data.label.size
  if not (distributed.fits_on_devices(nbytes, mesh) if on_device is None else on_device):
    return None
  table = {'feature': np.asarray(data.feature, np.float32), 'anchor_idx': np.asarray(data.anchor_idx, np.int32),
           'normal': np.asarray(data.label) == 0}
  return jax.device_put(table, distributed.replicated(mesh))


def train(config, data: 'FusionData', coresets: tuple[np.ndarray, np.ndarray], workdir, key: jax.Array, *,
          mesh: Mesh, on_epoch_end: Callable[[int, dict], None] | None = None,
          data_on_device: bool | None = None) -> FusionState:
  """Trains (or resumes training of) the LSPN and θ; returns the best-validation state (algorithms.md §4.5).

  `coresets = (img [K_R, D_R], pcd [K_P, D_P])`, normalised as the fusion features. `on_epoch_end(epoch, metrics)`
  is called after each finished epoch (after its state is saved). Re-running with the same inputs resumes from
  `workdir/state`; a finished run returns immediately. `data_on_device`: keep the whole fusion table on the devices
  and gather each batch there (None: when it fits on an accelerator; see `_table_on_device`); the same batches
  either way, the same training up to float rounding (XLA compiles the step around the gather differently). The
  losses are read back once per epoch, so the host prepares a batch while the device trains on the previous one.
  """
  from sklearn.metrics import roc_auc_score  # the validation AUROC; scoring never needs scikit-learn
  workdir = Path(workdir)
  c = config.g2sf
  rep = distributed.replicated(mesh)
  num_rows = len(data.label)
  rgb_dim = coresets[0].shape[1]
  if data.feature.shape[1] != rgb_dim + coresets[1].shape[1]:
    raise ValueError(f'fusion features have {data.feature.shape[1]} columns; coresets give '
                     f'{rgb_dim} + {coresets[1].shape[1]}')
  batch = batch_size(num_rows, c.batch_size)
  rows_sh = batch_sharding(batch, mesh)
  if rows_sh.is_fully_replicated and mesh.size > 1:
    logging.warning('fusion training: the batch of %d rows does not divide over %d devices, so every device computes '
                    'all of it (same result, no speed-up); choose g2sf.batch_size as a multiple of %d', batch,
                    mesh.size, mesh.size)
  train_rows, val_rows = split(num_rows, _rng(key, 0))
  label = np.asarray(data.label).astype(np.int64)
  mu, margin = constants(data, balanced_batches(train_rows, label, batch, _rng(key, 1)),
                         balanced_batches(train_rows, label, batch, _rng(key, 2)))

  params = init_params(config, jax.random.fold_in(key, 0), data.feature.shape[1])
  opt_state = make_optimizer(c).init(params)
  opt_def = jax.tree.structure(opt_state)
  start, best_val = 0, np.inf
  meta_common = {'num_rows': num_rows, 'batch': batch, 'feature_dim': int(data.feature.shape[1]),
                 'key': np.asarray(jax.random.key_data(key)).tolist()}
  if checkpoints.exists(workdir / 'state'):
    saved, meta = checkpoints.load(workdir / 'state')
    if {k: meta.get(k) for k in meta_common} != meta_common:
      raise ValueError(f'{workdir / "state"} was made for other data ({meta}); remove it to retrain')
    params = saved['params']
    opt_state = jax.tree.unflatten(opt_def, [saved['opt'][f'{i:04d}'] for i in range(opt_def.num_leaves)])
    start, best_val = meta['epoch'], meta['best_val']
    mu, margin = np.asarray(meta['mu'], np.float32), meta['margin']
    logging.info('fusion training: resuming %s at epoch %d', workdir, start)
  table = _table_on_device(data, mesh, data_on_device) if start < c.epochs else None
  train_step, val_step, _ = make_steps(c, mesh, rows_sh, gather=table is not None)
  params, opt_state = jax.device_put((params, opt_state), rep)
  dev_coresets = jax.device_put(tuple(jnp.asarray(x, jnp.float32) for x in coresets), rep)
  dev_mu, dev_margin = jax.device_put((jnp.asarray(mu), jnp.float32(margin)), rep)
  if table is None:
    put = lambda rows: (jax.device_put(_host_batch(data, rows), rows_sh),)
  else:
    put = lambda rows: (table, jax.device_put(np.asarray(rows, np.int32), rows_sh))

  for epoch in range(start, c.epochs):
    steps = distributed.StepOutputs()
    for step, rows in enumerate(balanced_batches(train_rows, label, batch, _rng(key, 3, epoch))):
      step_key = jax.random.fold_in(jax.random.fold_in(key, 1 + epoch), step)
      params, opt_state, terms = train_step(params, opt_state, *put(rows), dev_coresets, dev_mu, dev_margin, step_key)
      steps.append(terms)
    outputs = steps.fetch()
    metrics = {k: sum(float(o[k]) for o in outputs) / max(len(outputs), 1) for k in (outputs[0] if outputs else {})}
    require_finite(f'the LSPN training loss of epoch {epoch} ({metrics})', *metrics.values())
    if epoch > 0:  # algorithms.md §4.5d: the reference's epoch counter skips the first validation
      batches = balanced_batches(val_rows, label, batch, _rng(key, 4, epoch))
      vals = distributed.StepOutputs()
      for rows in batches:
        vals.append(val_step(params, *put(rows), dev_coresets, dev_mu, dev_margin))
      outs = vals.fetch()
      require_finite(f'the LSPN validation scores of epoch {epoch}', *[o['score'] for o in outs])
      val = float(np.mean([float(o['separation']) for o in outs]) +
                  c.w_margin * np.mean([float(o['margin']) for o in outs]))
      auroc = roc_auc_score(np.concatenate([label[rows] for rows in batches]),
                            np.concatenate([np.asarray(o['score']) for o in outs]))
      metrics.update(val=val, val_auroc=float(auroc))
      if val <= best_val:
        best_val = val
        _save_best(workdir, params, mu, margin, best_val, epoch)
    opt_leaves = jax.tree.leaves(opt_state)
    checkpoints.save(workdir / 'state', {'params': params, 'opt': {f'{i:04d}': x for i, x in enumerate(opt_leaves)}},
                     dict(meta_common, epoch=epoch + 1, best_val=float(best_val), mu=mu.tolist(),
                          margin=float(margin)))
    if on_epoch_end is not None:
      on_epoch_end(epoch, metrics)
  if not checkpoints.exists(workdir / 'best'):  # fewer than two epochs: no validation ran
    _save_best(workdir, params, mu, margin, float('inf'), c.epochs - 1)
  return load(workdir / 'best')


def _save_best(workdir: Path, params, mu, margin, best_val, epoch) -> None:
  checkpoints.save(workdir / 'best', {'lspn': params['lspn'], 'theta': params['theta'], 'mu': np.asarray(mu)},
                   {'margin': float(margin), 'best_val': float(best_val), 'epoch': int(epoch)})


def load(path) -> FusionState:
  """The trained fuser saved by `train` (`workdir/best`)."""
  tree, meta = checkpoints.load(path, how_to_make='python -m experiments.run --config.stages=train')
  return FusionState(lspn_params=tree['lspn'], theta=np.asarray(tree['theta'], np.float32),
                     mu=np.asarray(tree['mu'], np.float32), margin=meta['margin'], best_val=meta['best_val'],
                     epoch=meta['epoch'])
