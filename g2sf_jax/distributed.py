"""The one module that knows about devices and processes: the 1-D data mesh, placements, the primary process.

Memory banks are split along their rows over the mesh axis; queries and small tensors are replicated. Rows are
padded to a multiple of the device count; callers mask the padding (they know the true row count). Every component
that searches or trains takes the mesh it runs on from its caller (the runner makes one per run); none builds its
own.
"""
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axis_name: str = 'data', devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: `jax.devices()`, the devices of every process of a distributed run)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError('make_mesh: no devices given')
  return Mesh(np.asarray(devices), (axis_name,))


def axis_name(mesh: Mesh) -> str:
  if len(mesh.axis_names) != 1:
    raise ValueError(f'expected a 1-D mesh, got axes {mesh.axis_names}')
  return mesh.axis_names[0]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def row_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the mesh axis, other axes whole."""
  return NamedSharding(mesh, P(axis_name(mesh)))


def on_cpu(mesh: Mesh) -> bool:
  """Whether `mesh` holds the host's CPU devices (a mesh is of one platform), where some work is laid out for the
  cache rather than for an accelerator."""
  return mesh.devices.flat[0].platform == 'cpu'


def padded_rows(num_rows: int, mesh: Mesh, multiple: int = 1) -> int:
  """Smallest multiple of `multiple` × the device count that is ≥ num_rows (and ≥ `multiple` rows per device)."""
  n = mesh.size * multiple
  return max(n, -(-num_rows // n) * n)


def pad_rows(x: np.ndarray, num_rows: int, value: float = 0) -> np.ndarray:
  """`x [n, ...]` → `[num_rows, ...]` with `value` in the appended rows (no copy if already that size)."""
  if x.shape[0] == num_rows:
    return x
  if x.shape[0] > num_rows:
    raise ValueError(f'pad_rows: {x.shape[0]} rows do not fit in {num_rows}')
  pad = np.full((num_rows - x.shape[0],) + x.shape[1:], value, dtype=x.dtype)
  return np.concatenate([x, pad])


def shard_rows(x: np.ndarray | jax.Array, mesh: Mesh, value: float = 0, multiple: int = 1) -> jax.Array:
  """Pads `x [n, ...]` with `value` rows to `padded_rows(n, mesh, multiple)` and places it row-sharded on `mesh`
  (each device then holds a multiple of `multiple` rows)."""
  x = pad_rows(np.asarray(x), padded_rows(x.shape[0], mesh, multiple), value)
  return jax.device_put(x, row_sharded(mesh))


def replicate(x, mesh: Mesh):
  """`x` (an array or a pytree of them, e.g. model variables) copied to every device of `mesh`."""
  return jax.device_put(x, replicated(mesh))


def batch_parallel(fn, mesh: Mesh, replicated: int, batched: int, one_at_a_time: bool | None = None):
  """`fn(*replicated_args, *batch_args)` jitted data parallel: every device runs `fn` on its slice of the batch
  (`shard_batch`) with the replicated arguments (weights, keys) whole; the result stays split along the batch.

  On CPU devices `fn` runs on one sample at a time (a `lax.map` over the device's rows): XLA:CPU ran the DINO
  ViT-B/8 and PointMAE encoders 1.3× and 1.4–1.8× slower per sample at batch 8 than at batch 1 (a batch's
  activations, 1 GB for PointMAE's group encoder, leave the cache); accelerators run the device's rows together.
  The choice is made where the program is lowered (`lax.platform_dependent`), so a program exported for several
  platforms (`g2sf_jax.deploy`) makes it on each. Either way each sample's features are the ones `fn` computes for
  it alone, up to the matmul blocking of other batch shapes, so they do not depend on the device count.
  `one_at_a_time` forces one way.
  """
  axis = axis_name(mesh)
  specs = (P(),) * replicated + (P(axis),) * batched
  if one_at_a_time is None:
    together, alone = fn, _one_sample_at_a_time(fn, replicated)
    fn = lambda *args: jax.lax.platform_dependent(*args, cpu=alone, default=together)
  elif one_at_a_time:
    fn = _one_sample_at_a_time(fn, replicated)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(axis), check_vma=False))


def _one_sample_at_a_time(fn, replicated: int):
  """`fn` on a batch as a `lax.map` of `fn` on each sample (given to it as a batch of one)."""
  def mapped(*args):
    def one(rows):
      return jax.tree.map(lambda y: y[0], fn(*args[:replicated], *(x[None] for x in rows)))
    return jax.lax.map(one, args[replicated:])
  return mapped


def shard_batch(x: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
  """A batch `[B, ...]` split along B over `mesh` (data parallel), padded to a multiple of the device count by
  repeating its last sample; the caller keeps the first B rows of the result."""
  x = np.asarray(x)
  rows = padded_rows(x.shape[0], mesh)
  if rows > x.shape[0]:
    x = np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])
  return jax.device_put(x, row_sharded(mesh))


def gather(x: jax.Array) -> jax.Array | np.ndarray:
  """`x` whole in this process: itself when this process holds all of it (one process), else its shards from
  every process, all-gathered into a host array (a data-parallel result in a multi-process run)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def fits_on_devices(nbytes: int, mesh: Mesh, share: float = 0.5) -> bool:
  """Whether `nbytes` replicated on every device of `mesh` takes at most `share` of an accelerator's memory.

  False on CPU: there the devices are the host's memory, where the data already lies (memory-mapped), and a device
  copy would only double it. False too where the platform does not report its memory. Each process can only ask
  its own devices, so in a multi-process run process 0's answer holds for all (`primary_decides`): the processes
  must compile the same program.
  """
  fits = not on_cpu(mesh) and all(
      nbytes <= share * (device.memory_stats() or {}).get('bytes_limit', 0) for device in mesh.local_devices)
  return primary_decides(fits)


class StepOutputs:
  """The outputs of dispatched device steps, read back together (`fetch`) instead of after each step.

  A read per step (`float(loss)`) makes the host wait for the device before it prepares the next batch; without it
  the two overlap. At most `depth` steps are left in flight, since each holds its batch on the device.
  """

  def __init__(self, depth: int = 2):
    self.depth = depth
    self._outputs = []

  def append(self, output) -> None:
    self._outputs.append(output)
    if len(self._outputs) > self.depth:
      jax.block_until_ready(self._outputs[-self.depth - 1])

  def fetch(self) -> list:
    """Every output so far, as NumPy, in the order they were appended."""
    return jax.device_get(self._outputs)


def is_primary() -> bool:
  """True in the process that writes shared outputs (markers, reports): process 0, or the only process."""
  return jax.process_index() == 0


# Environments in which `jax.distributed.initialize()` finds the cluster by itself, and the variable that says how
# many processes it has (a single-task allocation runs as one process, without the coordination service).
_CLUSTER_SIZE_VARIABLES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def initialize(coordinator: str = '', num_processes: int = 0, process_id: int = -1, heartbeat_timeout_s: int = 100,
               environ: Mapping[str, str] = os.environ) -> bool:
  """Joins this process to a multi-process run (`jax.distributed`), before anything touches a device.

  With `coordinator` ('host:port' of process 0), `num_processes` and `process_id` given, those are used; with all
  three empty, JAX's own cluster detection runs when a cluster environment with more than one task is present
  (SLURM, Open MPI, a Cloud TPU pod slice), and otherwise this is a single process. On CPU the processes talk
  through gloo. Returns True when the run is multi-process. When a process dies, JAX's coordination service stops
  the others after `heartbeat_timeout_s` without a heartbeat, instead of leaving them waiting.
  """
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if explicit and not (coordinator and num_processes > 0 and 0 <= process_id < num_processes):
    raise ValueError('distributed: give all of coordinator (host:port), num_processes and process_id '
                     f'(0 ≤ process_id < num_processes), got {coordinator!r}, {num_processes}, {process_id}')
  cluster = any(int(environ.get(v, '1') or 1) > 1 for v in _CLUSTER_SIZE_VARIABLES) or \
      ',' in environ.get('TPU_WORKER_HOSTNAMES', '')
  if not explicit and not cluster:
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # only read by the CPU backend
  if explicit:
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
  return jax.process_count() > 1


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def primary_decides(value: bool) -> bool:
  """Process 0's `value`, in every process: decisions read from shared files (is a stage done?) must be the same
  everywhere, or the processes' collectives would diverge."""
  if jax.process_count() == 1:
    return value
  return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def enable_compilation_cache(path: str | os.PathLike) -> None:
  """Keeps every compiled program in JAX's persistent cache at `path`, so a later process reuses it.

  Process-wide (a JAX setting): call it once at a command-line entry point, before the first compilation.
  """
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
