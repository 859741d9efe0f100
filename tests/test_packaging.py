"""The installed package: building the wheel from setup.cfg gives the library alone, whole."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns('.venv', '.git', 'runs', '__pycache__', '*.egg-info', 'build', 'dist', '.gl', '.whl')


def test_wheel_installs_only_the_library_and_all_of_it(tmp_path):
  src = shutil.copytree(ROOT, tmp_path / 'src', ignore=_SKIP)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                  str(tmp_path / 'dist'), str(src)], check=True, capture_output=True, timeout=300)
  wheel, = (tmp_path / 'dist').glob('g2sf_jax-*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  top = {n.split('/')[0] for n in names if not n.split('/')[0].endswith(('.dist-info', '.data'))}
  assert top == {'g2sf_jax'}, top  # no experiments/, ports/, benchmarks/, references/ or datasets/ in site-packages
  packaged = {str(Path(n).parent) for n in names if n.endswith('/__init__.py')}
  in_tree = {str(p.parent.relative_to(ROOT)) for p in (ROOT / 'g2sf_jax').rglob('*.py') if '__pycache__' not in p.parts}
  assert in_tree <= packaged, sorted(in_tree - packaged)  # every folder of the library is a package that ships
