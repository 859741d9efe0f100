"""The Method interface: what a detection method declares so the runner and the detector need no `if method == …`.

A method has
  * rows: the result rows it produces for a config (e.g. IMG, PCD, FUS), and the main one (overlays, predict maps);
  * stages: its cached steps, each a `Stage` (name, dependencies, the config fields its outputs depend on, a code
    version, how to run it for a class or for the whole dataset);
  * a `Scorer`, loaded from its stages' outputs, that turns a batch of patch features into `{row: RowScores}`.

Every method's graph starts after the shared stages `prepare` (the prepared data) and `extract` (the patch features
of the train and test samples, method-independent, shared by every method of a work directory); the runner appends
an `evaluate` stage that scores the test features with the method's scorer. Stage ids are `'<owner>/<name>'`
(`'patchcore/banks'`); a method may depend on another method's stage (G²SF builds on PatchCore's banks), and the
versions of its outputs live under `<workdir>/<class>/<owner>/<name>/` (dataset-scope stages:
`<workdir>/<owner>/<name>/`; `g2sf_jax.workdir`).
"""
import abc
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax.data import kind
from g2sf_jax.scoring import RowScores, rows_from  # noqa: F401 (the methods' row type, re-exported)
from g2sf_jax.errors import ConfigError


# The feature kinds a scorer can ask for: the RGB backbone's patch grid, the point features pooled to the 56×56
# grid, and (CFM) pooled back to 224×224 (`g2sf_jax.features`).
FEATURE_KINDS = ('img', 'pcd', 'pcd224')


class Scorer(abc.ABC):
  """A method's scoring as one pure function of its arrays, so that the evaluation, predict and an exported bundle
  run the very same program (`g2sf_jax.scoring`, `g2sf_jax.deploy`).

  `needs` names the feature kinds it consumes (`FEATURE_KINDS`): `img` [B, h, w, Cr], `pcd` [B, 56, 56, Cp],
  `pcd224` [B, 224, 224, Cp]. `arrays` is its state, a pytree of arrays (banks placed on the mesh, normalisers,
  network weights); `apply(arrays, feats)` is traceable (jit, `jax.export`) and returns, per row, `image` [B],
  `maps` [B, 224, 224] and, where the method's reference computes AUPRO on other maps, `pro_maps`.
  """
  rows: tuple[str, ...] = ()
  needs: tuple[str, ...] = ()
  arrays: Any = None
  _jitted: Callable | None = None

  @abc.abstractmethod
  def apply(self, arrays: Any, feats: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """The scores of a batch: pure and traceable."""

  def per_sample(self, arrays: Any, feats: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """`apply` on one sample at a time (a `lax.map` over the batch): what runs, in this process and exported.

    XLA tiles a reduction or a product over a batch by the batch's size, so the last bits of a scan's scores would
    depend on how many scans came with it; one at a time, a scan scores the same in the evaluation, alone in
    `predict` and in any batch the server forms.
    """
    def one(sample):
      return jax.tree.map(lambda y: y[0], self.apply(arrays, {k: v[None] for k, v in sample.items()}))
    return jax.lax.map(one, dict(feats))

  def __call__(self, feats: Mapping[str, np.ndarray]) -> dict[str, RowScores]:
    """`per_sample` compiled once and run on this scorer's arrays → `{row: RowScores}` on the host."""
    if self._jitted is None:
      self._jitted = jax.jit(self.per_sample)
    missing = [k for k in self.needs if k not in feats]
    if missing:
      raise ValueError(f'the scorer of rows {self.rows} needs the features {missing}')
    out = self._jitted(self.arrays, {k: jnp.asarray(feats[k], jnp.float32) for k in self.needs})
    return rows_from(jax.device_get(out))


class ScorerContext(Protocol):
  """What loading a scorer needs: the run's config, the class, the mesh to search on, and where outputs are."""
  config: ml_collections.ConfigDict
  class_name: str
  mesh: Mesh

  def dir(self, stage_id: str) -> Path:
    """The published output folder of stage `stage_id` for this class (or the dataset, for a dataset-scope
    stage)."""


class StageContext(ScorerContext, Protocol):
  """What running a stage needs, provided by the runner (`experiments.runner`).

  `class_name` is '' for a dataset-scope stage; `classes` are the classes it pools over (`Stage.pool`; by default
  the run's); `out_dir` is the new version's folder the stage writes into (the same folder again after an
  interrupted run with the same inputs, so a stage can resume from what it holds); `dir(stage_id)` is the published
  version of a dependency; `data_dir(class_name)` holds a class's prepared data (`g2sf_jax.data.prepared`), for
  worker processes that open the splits themselves.
  """
  classes: tuple[str, ...]
  out_dir: Path

  def data_dir(self, class_name: str | None = None) -> Path:
    """The prepared data of `class_name` (default: this stage's class)."""

  def backbones(self) -> tuple[Any, Any]:
    """(rgb backbone or None, point backbone or None) of the run's config, built once."""

  def key(self, *names: str) -> jax.Array:
    """The run's PRNG key folded with the class and `names`: explicit and reproducible."""

  def features(self, split: str, class_name: str | None = None) -> dict[str, np.ndarray]:
    """The extracted patch features of a split (`features.load_cached` format)."""

  def samples(self, split: str, full: bool = False, class_name: str | None = None):
    """The prepared samples of a split: model-ready (`prepared.load_split`) or at stored resolution (`_full`)."""

  def progress(self, total: int, desc: str, unit: str = 'img'):
    """A progress bar (tqdm) for `total` steps."""

  def log(self, msg: str, *args) -> None:
    """One INFO line in the terminal and `run.log`."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One cached step of a method.

  run(ctx) does the work into `ctx.out_dir` and returns a small JSON-able summary for the manifest. deps are the ids
  of the stages whose outputs it reads ('extract', 'patchcore/banks', or a stage of its own method). keys are the
  config fields (dotted paths; a section stands for all its fields) its outputs depend on, minus `exclude`;
  `extra(ctx)` adds what is not a config field (backbone weights, the run's class list). Raise `version` when the
  code starts computing something else from the same inputs. scope: 'class' (once per class) or 'dataset' (once per
  run, over all its classes; its deps are then taken for every class). `fresh(ctx, info)` says whether published
  outputs (whose run returned `info`) still reflect inputs outside the work directory that the key cannot see (the
  generated raw files of `prepare`). `salvage`: a rebuild of damaged outputs starts from the files that are still
  intact (the feature chunks of `extract`). `variant(config)` names a sub-folder per setting, so runs that need
  different outputs of the same stage (features of other backbones) keep each instead of overwriting one another.
  In a multi-process run every process runs every stage (their device work is split over the global mesh) and
  process 0 writes the outputs; `all_processes=False` is for a stage without device work (`prepare`'s file
  conversion), which process 0 runs alone while the others wait. `pool` names a config field listing the classes a
  stage reads across (its `ctx.classes`: M3DM's UFF, G²SF's anomaly sources); empty, or the field empty, means the
  run's classes. The key holds the resolved list (not the field), and a dataset-scope stage's deps are taken for
  each class of it, so naming a full run's list keeps its outputs when a later run covers only some of the classes.
  """
  name: str
  run: Callable[[StageContext], dict | None]
  owner: str = ''
  deps: tuple[str, ...] = ()
  keys: tuple[str, ...] = ()
  exclude: tuple[str, ...] = ()
  version: int = 1
  scope: str = 'class'
  extra: Callable[[StageContext], Any] | None = None
  fresh: Callable[[StageContext, dict], bool] | None = None
  salvage: bool = False
  variant: Callable[[ml_collections.ConfigDict], str] | None = None
  all_processes: bool = True
  pool: str = ''

  def __post_init__(self):
    if self.scope not in ('class', 'dataset'):
      raise ValueError(f"stage {self.id}: scope must be 'class' or 'dataset', got {self.scope!r}")

  @property
  def id(self) -> str:
    return f'{self.owner}/{self.name}' if self.owner else self.name

  def folder(self, config: ml_collections.ConfigDict) -> str:
    """The stage's folder below its class (or the work directory): its id, plus its variant's sub-folder."""
    return f'{self.id}/{self.variant(config)}' if self.variant else self.id


class Method(abc.ABC):
  """A detection method. Subclasses set `name` and implement `rows`, `stages` and `scorer`."""
  name: str
  # Config fields the scorer reads (they key the evaluate stage together with `scoring`).
  scoring_keys: tuple[str, ...] = ()
  # The AUPRO thresholds of the method's reference evaluation, used unless `metrics.aupro_thresholds` is set.
  aupro_thresholds: int | str = 100

  @abc.abstractmethod
  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The result rows for `config`, in table order."""

  def main_row(self, config: ml_collections.ConfigDict) -> str:
    """The row whose maps the report overlays and `predict` writes: by default the last (the method's own)."""
    return self.rows(config)[-1]

  @abc.abstractmethod
  def stages(self, config: ml_collections.ConfigDict) -> tuple[Stage, ...]:
    """The method's stages for `config`, dependencies first (shared ones such as PatchCore's banks included)."""

  @abc.abstractmethod
  def scorer(self, ctx: ScorerContext) -> Scorer:
    """The scorer of one class, loaded from the outputs of `stages`."""

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field when the method cannot run `config` (called before any stage)."""


def modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """('rgb', 'xyz'), ('rgb',) or ('xyz',) from `config.modalities`."""
  try:
    return kind.parse_modalities(config.modalities)
  except ValueError as e:
    raise ConfigError(f'config.modalities: {e}') from None
