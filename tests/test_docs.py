"""The documents that are generated from the code or point into it stay true to it."""
import re
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_interfaces_page_matches_the_code():
  res = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'interfaces_doc.py'), '--check'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr


def test_interfaces_page_is_rendered_from_docstrings():
  render = runpy.run_path(str(ROOT / 'scripts' / 'interfaces_doc.py'), run_name='interfaces_doc')['render']
  text = render()
  from g2sf_jax.methods import base
  assert base.Method.stages.__doc__.split('\n')[0] in text and '| `pool` | `str` |' in text


def test_code_cites_sections_that_exist():
  headings = (ROOT / 'docs' / 'algorithms.md').read_text()
  sections = set(re.findall(r'^#+ (\d+(?:\.\d+)*)', headings, re.M))
  cited = set()
  for path in ROOT.glob('**/*.py'):
    if '.venv' in path.parts:
      continue
    for m in re.finditer(r'algorithms\.md §(\d+(?:\.\d+)*)', path.read_text()):
      cited.add((m.group(1).rstrip('.'), str(path.relative_to(ROOT))))
  missing = sorted((s, p) for s, p in cited if s not in sections and s.rsplit('.', 1)[0] not in sections)
  assert not missing, missing
  outside = re.compile(r'\bSPE' + r'C\b')  # the old design document outside the repository (split: not a match here)
  assert not [p for p in ROOT.glob('**/*.py') if '.venv' not in p.parts and outside.search(p.read_text())]
