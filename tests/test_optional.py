import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WITHOUT_OPEN3D = textwrap.dedent('''
  import numpy as np
  import pytest
  from experiments import config_check, pipeline, predict, run  # noqa: F401 (importable without open3d)
  from experiments.configs import synthetic
  from g2sf_jax import backbones, fpfh  # noqa: F401
  from g2sf_jax.data import preprocessing
  config_check.validate(synthetic.get_config())
  assert preprocessing.pad_square(np.zeros((150, 120), np.uint8)).shape == (200, 200)
  with pytest.raises(ImportError, match=r'preparing an MVTec-layout dataset .* needs open3d .*libusb') as e:
    preprocessing.largest_cluster(np.ones((4, 4, 3), np.float32), None)
  assert 'blocked for the test' in str(e.value)
  with pytest.raises(ImportError, match=r'point_backbone=fpfh\\) needs open3d'):
    fpfh.fpfh_points(np.random.default_rng(0).normal(size=(10, 3)))
  print('ok')
''')


def test_only_the_stages_that_use_open3d_need_it(tmp_path):
  """With `import open3d` failing, the runner, predict and the backbone registry import and a config validates;
  preparation and FPFH raise an ImportError that names the stage and how to install open3d."""
  (tmp_path / 'open3d').mkdir()
  (tmp_path / 'open3d' / '__init__.py').write_text("raise ImportError('open3d blocked for the test')\n")
  res = subprocess.run([sys.executable, '-c', _WITHOUT_OPEN3D], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={'PYTHONPATH': f'{tmp_path}:{ROOT}', 'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert res.returncode == 0 and res.stdout.strip().endswith('ok'), res.stderr[-3000:]
