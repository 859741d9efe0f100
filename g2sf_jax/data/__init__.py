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

from pathlib import Path

from g2sf_jax.data import eyecandies, folder, kind, mvtec3d, synthetic
from g2sf_jax.io import DataError

KINDS: dict[str, kind.DatasetKind] = {k.name: k for k in (mvtec3d.KIND, folder.KIND, eyecandies.KIND, synthetic.KIND)}


def get(name: str) -> kind.DatasetKind:
  """The dataset kind `name` (`config.dataset`)."""
  if name not in KINDS:
    raise DataError(f'unknown dataset {name!r}; expected one of {", ".join(KINDS)}')
  return KINDS[name]


def found_classes(raw_dir: str | Path) -> tuple[str, ...]:
  """The class folders of a raw dataset: sub-folders that hold a `train/` folder, sorted."""
  raw_dir = Path(raw_dir)
  return tuple(sorted(p.name for p in raw_dir.iterdir() if (p / 'train').is_dir())) if raw_dir.is_dir() else ()


def resolve_classes(dataset: str, classes: str | Sequence[str] | None = None,
                    raw_dir: str | Path | None = None) -> tuple[str, ...]:
  """Validated class names: None/'' = all; a comma-separated string or a sequence = that subset.

  A kind with `open_classes` (MVTec 3D-AD, `folder`) also has every class folder found in `raw_dir`, and all of them
  are its default (the usual classes first, in their order); without `raw_dir` any name is accepted.
  """
  k = get(dataset)
  found = found_classes(raw_dir) if raw_dir and k.open_classes else ()
  known = tuple(c for c in k.classes if not found or c in found) + tuple(c for c in found if c not in k.classes)
  if not classes:
    if not known:
      raise DataError(f'no {dataset} class found' + (f' in {raw_dir} (expected <class>/train/good/)' if raw_dir
                                                     else ': name the classes (config.classes)'))
    return known
  if isinstance(classes, str):
    classes = [c.strip() for c in classes.split(',') if c.strip()]
  for name in classes:
    if name not in known and not (k.open_classes and not raw_dir):
      where = f' in {raw_dir}' if raw_dir and k.open_classes else ''
      raise DataError(f'unknown {dataset} class {name!r}{where}; expected one of {", ".join(known) or "(none)"}')
  return tuple(classes)
