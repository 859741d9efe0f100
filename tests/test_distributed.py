"""Mesh and row-sharding helpers (the single device of the test process; 8 devices are covered in
tests/memory_bank/test_search.py::test_knn_one_vs_eight_devices)."""
import types

import jax
import numpy as np
import pytest

from g2sf_jax import distributed


def test_mesh_and_padding():
  mesh = distributed.make_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == jax.device_count()
  assert distributed.axis_name(mesh) == 'data'
  assert distributed.padded_rows(0, mesh) == mesh.size
  assert distributed.padded_rows(10, mesh) % mesh.size == 0


def test_pad_rows():
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  y = distributed.pad_rows(x, 5, value=np.inf)
  np.testing.assert_array_equal(y[:3], x)
  assert np.isinf(y[3:]).all() and y.shape == (5, 2)
  assert distributed.pad_rows(x, 3) is x
  with pytest.raises(ValueError, match='do not fit'):
    distributed.pad_rows(x, 2)


def test_shard_and_replicate_round_trip():
  mesh = distributed.make_mesh(devices=jax.devices()[:1])
  x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
  s = distributed.shard_rows(x, mesh)
  assert s.sharding == distributed.row_sharded(mesh)
  np.testing.assert_array_equal(np.asarray(s)[:7], x)
  r = distributed.replicate(x, mesh)
  assert r.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(r), x)


def test_the_single_process_is_primary():
  assert distributed.is_primary()  # the only process of a test run
  assert distributed.make_mesh().size == jax.device_count()


def test_initialize_is_a_no_op_for_one_process_and_checks_its_arguments():
  assert not distributed.initialize(environ={})  # no fields, no cluster: a single process, nothing initialised
  assert not distributed.initialize(environ={'SLURM_NTASKS': '1'})  # a one-task allocation is one process
  with pytest.raises(ValueError, match='give all of coordinator'):
    distributed.initialize('localhost:1234', num_processes=2, environ={})  # process_id missing
  with pytest.raises(ValueError, match='0 ≤ process_id < num_processes'):
    distributed.initialize('localhost:1234', num_processes=2, process_id=2, environ={})
  assert jax.process_count() == 1
  assert distributed.primary_decides(True) and not distributed.primary_decides(False)
  distributed.barrier('one process: returns at once')


def test_fits_on_devices_only_on_accelerators_with_room():
  mesh = distributed.make_mesh()
  assert not distributed.fits_on_devices(1, mesh)  # CPU: the host memory the data already lies in
  def gpu(stats):
    devices = [types.SimpleNamespace(platform='gpu', memory_stats=lambda: stats)]
    return types.SimpleNamespace(devices=np.array(devices), local_devices=devices)
  assert distributed.fits_on_devices(40 << 30, gpu({'bytes_limit': 80 << 30}))
  assert not distributed.fits_on_devices(41 << 30, gpu({'bytes_limit': 80 << 30}))
  assert not distributed.fits_on_devices(1, gpu(None))  # memory not reported


def test_step_outputs_come_back_in_order_as_numpy():
  mesh = distributed.make_mesh()
  step = jax.jit(lambda x, i: {'loss': x.sum() * i, 'rows': x * i})
  outputs = distributed.StepOutputs(depth=2)
  x = distributed.replicate(np.arange(4, dtype=np.float32), mesh)
  for i in range(5):
    outputs.append(step(x, i))
  got = outputs.fetch()
  assert [float(o['loss']) for o in got] == [6.0 * i for i in range(5)]
  assert all(isinstance(o['rows'], np.ndarray) for o in got)
  np.testing.assert_array_equal(got[3]['rows'], np.arange(4) * 3)


def test_step_outputs_wait_for_all_but_the_last_steps():
  waited = []

  class Pending:  # a step output that records when the host waits for it
    def __init__(self, i):
      self.i = i

    def block_until_ready(self):
      waited.append(self.i)
      return self

  outputs = distributed.StepOutputs(depth=2)
  for i in range(5):
    outputs.append(Pending(i))
    assert sorted(set(waited)) == list(range(max(0, i - 1)))  # steps i-1 and i may still run
