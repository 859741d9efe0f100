import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WITHOUT_OPEN3D = textwrap.dedent('''
  import numpy as np
  import pytest
  from experiments import config_check, predict, run, runner  # noqa: F401 (importable without open3d)
  from experiments.configs import synthetic
  from g2sf_jax import backbones, fpfh  # noqa: F401
  from g2sf_jax.data import preprocessing, synthetic as generated
  config_check.validate(synthetic.get_config())
  rgb, xyz, _ = generated.render_sample('cube', 'good', 200, 0)
  sample = preprocessing.preprocess_mvtec(xyz, rgb, np.zeros((200, 200), np.uint8))
  kept = (sample.xyz != 0).all(-1)
  assert sample.problems == () and 0 < kept.sum() < 0.5 * (xyz != 0).all(-1).sum()
  with pytest.raises(ImportError, match=r'point_backbone=fpfh\\) needs open3d .*libusb') as e:
    fpfh.fpfh_points(np.random.default_rng(0).normal(size=(10, 3)))
  assert 'blocked for the test' in str(e.value)
  print('ok')
''')


def test_only_fpfh_needs_open3d(tmp_path):
  """With `import open3d` failing, the runner, predict and the backbone registry import, a config validates and a raw
  scan is cleaned (plane and DBSCAN, algorithms.md §1.2); FPFH raises an ImportError that names it and how to install
  open3d."""
  (tmp_path / 'open3d').mkdir()
  (tmp_path / 'open3d' / '__init__.py').write_text("raise ImportError('open3d blocked for the test')\n")
  res = subprocess.run([sys.executable, '-c', _WITHOUT_OPEN3D], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={'PYTHONPATH': f'{tmp_path}:{ROOT}', 'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert res.returncode == 0 and res.stdout.strip().endswith('ok'), res.stderr[-3000:]
