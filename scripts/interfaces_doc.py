"""Writes docs/interfaces.md from the code: the contracts between the runner, the methods and the data.

  python scripts/interfaces_doc.py          # rewrite docs/interfaces.md
  python scripts/interfaces_doc.py --check  # exit 1 if docs/interfaces.md differs from the code (tests do this)

Every entry is a docstring or a signature read with `inspect`, so the page cannot drift from the code.
"""
import argparse
import dataclasses
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import stages  # noqa: E402
from experiments.configs import common  # noqa: E402
from g2sf_jax import backbones, data, methods, workdir  # noqa: E402
from g2sf_jax.data import kind  # noqa: E402
from g2sf_jax.methods import base  # noqa: E402

OUT = ROOT / 'docs' / 'interfaces.md'


def _doc(obj) -> str:
  return inspect.cleandoc(obj.__doc__ or '').strip()


def _first(obj) -> str:
  return _doc(obj).split('\n\n')[0].replace('\n', ' ')


def _short(text: str) -> str:
  """Dotted module paths dropped from type names (`numpy.ndarray` → `np.ndarray`, `jax…Array` → `jax.Array`)."""
  text = re.sub(r'\bnumpy\.', 'np.', text)
  text = re.sub(r'\bjax\.[\w.]*\.Array\b', 'jax.Array', text)
  return re.sub(r'\b(?!np\.|jax\.Array)(?:[a-z_][\w]*\.)+([A-Za-z_]\w*)', r'\1', text)


def _type(annotation) -> str:
  return _short(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))


def _members(cls) -> list[str]:
  """`name(signature)`: first docstring paragraph, for the public methods and properties a class defines itself."""
  lines = []
  hints = typing.get_type_hints(cls) if not dataclasses.is_dataclass(cls) else {}
  for name, value in hints.items():
    if not name.startswith('_') and name in cls.__dict__.get('__annotations__', {}):
      lines.append(f'- `{name}: {_type(value)}`')
  for name, value in cls.__dict__.items():
    if name.startswith('_') and name != '__call__':
      continue
    if isinstance(value, property):
      lines.append(f'- `{name}` (property): {_first(value.fget)}')
    elif inspect.isfunction(value):
      sig = _short(str(inspect.signature(value)).replace('(self, ', '(').replace('(self)', '()'))
      lines.append(f'- `{name}{sig}`: {_first(value)}' if value.__doc__ else f'- `{name}{sig}`')
  return lines


def _fields(cls) -> list[str]:
  rows = ['| field | type | default |', '|---|---|---|']
  for f in dataclasses.fields(cls):
    default = '' if f.default is dataclasses.MISSING else f'`{f.default!r}`'
    rows.append(f'| `{f.name}` | `{_type(f.type)}` | {default} |')
  return rows


def render() -> str:
  config = common.get_base_config()
  intro = ('The contracts between the runner (`experiments/runner.py`), the methods (`g2sf_jax/methods/`), the data '
           '(`g2sf_jax/data/`) and the work directory. Generated from the code by `python scripts/interfaces_doc.py`; '
           '`tests/test_docs.py` fails when this page and the code differ. Each entry is the code\'s own docstring.')
  out = ['# Interfaces', '', textwrap.fill(intro, 120), '',
         '## Methods and stages (`g2sf_jax/methods/base.py`)', '', _doc(base), '']
  for cls in (base.Method, base.Scorer, base.ScorerContext, base.StageContext):
    out += [f'### `{cls.__name__}`', '', _doc(cls), ''] + _members(cls) + ['']
  for cls in (base.Stage, base.RowScores):
    out += [f'### `{cls.__name__}`', '', _doc(cls), '']
    out += (_fields(cls) if dataclasses.is_dataclass(cls) else [f'- `{n}`' for n in cls._fields]) + ['']
  out += ['## Registered methods (`g2sf_jax/methods/__init__.py`)', '',
          f'With the default config (`modalities={config.modalities!r}`); the runner adds `prepare` and `extract` '
          'before a method\'s stages and its own stages after them (`experiments/stages.py`).', '',
          '| method | rows | stages | scorer reads |', '|---|---|---|---|']
  for name, method in methods.REGISTRY.items():
    graph = ', '.join(f'`{s.id}`' for s in stages.stage_graph(method, config))
    keys = ', '.join(f'`{k}`' for k in method.scoring_keys) or '–'
    out.append(f'| `{name}` | {", ".join(method.rows(config))} | {graph} | {keys} |')
  out += ['', '## Dataset kinds (`g2sf_jax/data/kind.py`)', '', _doc(kind.DatasetKind), '']
  out += _fields(kind.DatasetKind) + ['', '| kind | classes | a new scan is given as |', '|---|---|---|']
  for name, k in data.KINDS.items():
    out.append(f'| `{name}` | {", ".join(k.classes)} | {", ".join(f"`{f}=`" for f in k.scan_files)} |')
  out += ['', f'### `{kind.Stored.__name__}`', '', _doc(kind.Stored), ''] + _fields(kind.Stored)
  out += ['', '## Backbones (`g2sf_jax/backbones.py`)', '', _doc(backbones), '']
  for cls in (backbones.RgbBackbone, backbones.PointBackbone):
    out += [f'### `{cls.__name__}`', ''] + _members(cls) + ['']
  out += [f'Registered: RGB {", ".join(f"`{n}`" for n in backbones.RGB_BACKBONES)}; point '
          f'{", ".join(f"`{n}`" for n in backbones.POINT_BACKBONES)}.', '',
          '## Work directory (`g2sf_jax/workdir.py`)', '', _doc(workdir), '']
  return '\n'.join(out).rstrip() + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='exit 1 if the page differs from the code')
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    if not OUT.is_file() or OUT.read_text() != text:
      print(f'{OUT} differs from the code: run python scripts/interfaces_doc.py', file=sys.stderr)
      return 1
    return 0
  OUT.write_text(text)
  print(f'wrote {OUT}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
