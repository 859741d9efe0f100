"""Mesh and row-sharding helpers (the single device of the test process; 8 devices are covered in
tests/test_memory_bank.py::test_knn_one_vs_eight_devices)."""
import jax
import numpy as np
import pytest

from g2sf_jax import sharding


def test_mesh_and_padding():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == jax.device_count()
  assert sharding.axis_name(mesh) == 'data'
  assert sharding.padded_rows(0, mesh) == mesh.size
  assert sharding.padded_rows(10, mesh) % mesh.size == 0


def test_pad_rows():
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  y = sharding.pad_rows(x, 5, value=np.inf)
  np.testing.assert_array_equal(y[:3], x)
  assert np.isinf(y[3:]).all() and y.shape == (5, 2)
  assert sharding.pad_rows(x, 3) is x
  with pytest.raises(ValueError, match='do not fit'):
    sharding.pad_rows(x, 2)


def test_shard_and_replicate_round_trip():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
  s = sharding.shard_rows(x, mesh)
  assert s.sharding == sharding.row_sharded(mesh)
  np.testing.assert_array_equal(np.asarray(s)[:7], x)
  r = sharding.replicate(x, mesh)
  assert r.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(r), x)
