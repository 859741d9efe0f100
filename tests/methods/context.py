"""A `StageContext` over in-memory features, for testing one method stage without the runner (test-only)."""
import dataclasses
from pathlib import Path

import jax
import ml_collections
from tqdm import tqdm

from g2sf_jax import distributed


@dataclasses.dataclass
class FakeContext:
  config: ml_collections.ConfigDict
  root: Path
  train: dict                      # {'img': [N, h, w, Cr], 'pcd': [N, 56, 56, Cp]}
  class_name: str = 'cube'
  classes: tuple = ('cube',)
  stage_id: str = ''
  samples_by_split: dict = dataclasses.field(default_factory=dict)
  point_backbone: object = None
  mesh: object = dataclasses.field(default_factory=distributed.make_mesh)
  logged: list = dataclasses.field(default_factory=list)

  @property
  def out_dir(self) -> Path:
    path = self.dir(self.stage_id)
    path.mkdir(parents=True, exist_ok=True)
    return path

  def dir(self, stage_id: str) -> Path:
    return self.root / stage_id

  def key(self, *names: str) -> jax.Array:
    key = jax.random.key(0)
    for n in names:
      key = jax.random.fold_in(key, len(n))
    return key

  def features(self, split: str, class_name: str | None = None) -> dict:
    return {k: v.copy() for k, v in self.train.items()}

  def samples(self, split: str, full: bool = False, class_name: str | None = None):
    return self.samples_by_split[split]

  def backbones(self):
    return None, self.point_backbone

  def progress(self, total: int, desc: str, unit: str = 'img'):
    return tqdm(total=total, desc=desc, unit=unit, disable=True)

  def log(self, msg: str, *args) -> None:
    self.logged.append(msg % args)
