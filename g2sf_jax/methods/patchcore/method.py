"""PatchCore per modality: the IMG and PCD rows (algorithms.md §3), and the banks G²SF and M3DM build on.

Stage `banks`: every train sample's patch features → one memory bank per modality (IMG normalised by its scalar
mean/std, PCD raw, algorithms.md §3.1) → greedy coreset (algorithms.md §3.2). The scorer searches each test patch's
nearest coreset rows (algorithms.md §3.3) and keeps the anchors, so G²SF's fusion reuses the same search.
"""
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import features, memory_bank
from g2sf_jax.ops import exact
from g2sf_jax.methods import base

ROWS = {'rgb': 'IMG', 'xyz': 'PCD'}
FEATURES = {'rgb': 'img', 'xyz': 'pcd'}  # modality → feature key (and bank name)
BANK_CHECKPOINT = 'coresets'


def coreset_bank(ctx: base.StageContext, name: str, bank: np.ndarray, normalise: bool,
                 normaliser: memory_bank.Normaliser | None = None, size: int | None = None) -> memory_bank.ModalityBank:
  """`memory_bank.build` with the config's coreset fields, the key folded with `name`, and a progress bar (ETA).

  `normaliser` / `size` override the bank's own statistics and `coreset_fraction` (M3DM's reference sizing).
  """
  c = ctx.config.memory_bank
  k = size if size is not None else memory_bank.coreset_size(bank.shape[0], c.coreset_fraction)
  ctx.log('banks %s: %s bank %s → coreset of %d rows (%.1f%%)', ctx.class_name, name, bank.shape, k,
          100 * k / bank.shape[0])
  bar = ctx.progress(k, f'{ctx.class_name} {name} coreset', unit='row')
  built = memory_bank.build(bank, normalise=normalise, fraction=c.coreset_fraction, eps=c.coreset_eps,
                            key=ctx.key('coreset', name), fp16=c.coreset_fp16,
                            progress=lambda done, _: bar.update(done - bar.n), normaliser=normaliser, size=k,
                            mesh=ctx.mesh, mode=c.coreset_mode)
  bar.close()
  return built


def build_banks(ctx: base.StageContext) -> dict:
  """One coreset per modality from the class's train features, saved under `ctx.out_dir`."""
  feats = ctx.features('train')
  banks = {}
  for modality in base.modalities(ctx.config):
    name = FEATURES[modality]
    bank = feats.pop(name)
    banks[name] = coreset_bank(ctx, name, bank.reshape(-1, bank.shape[-1]), normalise=name == 'img')
  memory_bank.save(ctx.out_dir / BANK_CHECKPOINT, banks, {'class': ctx.class_name})
  return {m: list(b.coreset.shape) for m, b in banks.items()}


def load_banks(ctx: base.ScorerContext) -> dict[str, memory_bank.ModalityBank]:
  banks, _ = memory_bank.load(ctx.dir('patchcore/banks') / BANK_CHECKPOINT,
                              how_to_make=f'experiments.run with --config.classes={ctx.class_name} '
                                          '--config.stages=banks')
  return banks


def normalised(arrays: Mapping, feats: Mapping[str, jax.Array], name: str) -> jax.Array:
  """Raw features of bank `name` → `[B, 3136, D]` normalised like the bank (`mean`, `std` in `arrays`), IMG on the
  56×56 grid (28×28 grids nearest-upsampled, algorithms.md §2.5). Traceable."""
  x = jnp.asarray(feats[name], jnp.float32)
  x = exact.divide(x - arrays['mean'], arrays['std'])
  if name == 'img' and x.shape[1] != features.GRID:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x.reshape(x.shape[0], features.GRID * features.GRID, -1)


class PatchCoreScorer(base.Scorer):
  """IMG / PCD rows of the modalities the banks cover (algorithms.md §3.3); `search` also returns each patch's
  `num_anchors` nearest coreset rows, on which G²SF's fusion builds."""

  def __init__(self, banks: Mapping[str, memory_bank.ModalityBank], mesh: Mesh, blur: str, num_anchors: int):
    self.mesh, self.blur, self.num_anchors = mesh, blur, num_anchors
    placed = {name: memory_bank.place_bank(b.coreset, mesh) for name, b in banks.items()}
    self.shapes = {name: (p.dim, p.num_rows) for name, p in placed.items()}  # static: they size the programs
    self.arrays = {name: {'rows': p.rows, 'mean': np.float32(banks[name].normaliser.mean),
                          'std': np.float32(banks[name].normaliser.std)} for name, p in placed.items()}
    self.rows = tuple(row for modality, row in ROWS.items() if FEATURES[modality] in banks)
    self.needs = tuple(FEATURES[m] for m in ROWS if FEATURES[m] in banks)

  def search(self, arrays: Mapping, feats: Mapping[str, jax.Array]) -> dict[str, tuple[jax.Array, dict]]:
    """Per bank: (normalised features [B, 3136, D], `memory_bank.patchcore`'s results). Traceable."""
    out = {}
    for name in self.needs:
      x = normalised(arrays[name], feats, name)
      dim, num_rows = self.shapes[name]
      out[name] = x, memory_bank.patchcore(x, arrays[name]['rows'], dim=dim, num_rows=num_rows, mesh=self.mesh,
                                           k=self.num_anchors, blur=self.blur)
    return out

  def apply(self, arrays, feats):
    found = self.search(arrays, feats)
    return {row: {'image': found[FEATURES[m]][1]['image'], 'maps': found[FEATURES[m]][1]['maps']}
            for m, row in ROWS.items() if FEATURES[m] in found}


def banks_stage() -> base.Stage:
  """The shared bank stage (G²SF and the plain rows use the same banks)."""
  return base.Stage('banks', build_banks, owner='patchcore', deps=('extract',), keys=('memory_bank', 'seed'),
                    exclude=('memory_bank.num_anchors',))


class PatchCore(base.Method):
  """Unimodal PatchCore rows: IMG for RGB, PCD for point clouds (both when the run has both)."""
  name = 'patchcore'

  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(ROWS[m] for m in base.modalities(config))

  def stages(self, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
    return (banks_stage(),)

  def scorer(self, ctx: base.ScorerContext) -> PatchCoreScorer:
    c = ctx.config
    return PatchCoreScorer(load_banks(ctx), ctx.mesh, c.scoring.blur, c.memory_bank.num_anchors)
