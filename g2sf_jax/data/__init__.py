"""Datasets: the kinds (raw layout + preprocessing, NumPy only), the §1.4 transforms, and the prepared TFDS data.

  kind.py          what a dataset kind provides (`DatasetKind`, `Stored`, `Listing`)
  mvtec3d.py · eyecandies.py · synthetic.py   the kinds (algorithms.md §1.1–§1.3); `synthetic` also generates its data
  preprocessing.py the reference's one-off preprocessing as array functions (algorithms.md §1.2, §1.3)
  transforms.py    the per-sample load transforms (algorithms.md §1.4), shared by evaluation, synthesis and predict
  prepared.py      `prepare` (TFDS array_record via `datasets/`) and `load_split` / `load_split_full`
  builder.py       the TFDS builder the thin `datasets/<name>/` files subclass (imports tensorflow_datasets)

`KINDS` is the registry: adding a dataset kind is a module here, a builder in `datasets/` and one line below.
"""
from typing import Sequence

from g2sf_jax.data import eyecandies, kind, mvtec3d, synthetic
from g2sf_jax.io import DataError

KINDS: dict[str, kind.DatasetKind] = {k.name: k for k in (mvtec3d.KIND, eyecandies.KIND, synthetic.KIND)}


def get(name: str) -> kind.DatasetKind:
  """The dataset kind `name` (`config.dataset`)."""
  if name not in KINDS:
    raise DataError(f'unknown dataset {name!r}; expected one of {", ".join(KINDS)}')
  return KINDS[name]


def resolve_classes(dataset: str, classes: str | Sequence[str] | None = None) -> tuple[str, ...]:
  """Validated class names: None/'' = all; a comma-separated string or a sequence = that subset."""
  known = get(dataset).classes
  if not classes:
    return known
  if isinstance(classes, str):
    classes = [c.strip() for c in classes.split(',') if c.strip()]
  for name in classes:
    if name not in known:
      raise DataError(f'unknown {dataset} class {name!r}; expected one of {", ".join(known)}')
  return tuple(classes)
