import numpy as np
import open3d as o3d
import pytest

from g2sf_jax import ply


def test_write_read_and_open3d_reads_it(tmp_path):
  rng = np.random.default_rng(0)
  points, scores = rng.normal(size=(50, 3)).astype(np.float32), rng.uniform(size=50).astype(np.float32)
  path = ply.write(tmp_path / 'c.ply', points, scores, comment='scan a\nclass b')
  back, got = ply.read(path)
  assert np.array_equal(back, points) and np.array_equal(got, scores) and ply.is_ours(path)
  cloud = o3d.io.read_point_cloud(str(path))
  assert np.allclose(np.asarray(cloud.points), points) and np.allclose(np.asarray(cloud.colors) * 255,
                                                                       ply.colours(scores), atol=0.6)
  assert ply.colours(np.array([0.0]))[0].sum() < ply.colours(np.array([1.0]))[0].sum()


def test_foreign_files_are_not_ours_and_bad_shapes_are_refused(tmp_path):
  other = tmp_path / 'o.ply'
  o3d.io.write_point_cloud(str(other), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.zeros((3, 3)))))
  assert not ply.is_ours(other) and not ply.is_ours(tmp_path / 'missing.ply')
  with pytest.raises(ValueError, match=r'x\.ply: expected points \[N, 3\] and scores \[N\]'):
    ply.write(tmp_path / 'x.ply', np.zeros((4, 2)), np.zeros(4))
