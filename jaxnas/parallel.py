"""Data parallelism with ``jax.sharding``: one code path for one device, many, and many hosts.

The search step is jitted with shardings (``jax.jit(step, in_shardings, out_shardings)``): the
state is replicated on every device of a 1-D mesh named ``"data"``, the batch is split along its
batch axis, and the compiler (GSPMD) inserts the reductions. The program computes the same function
as on one device: the mean cross-entropy and BatchNorm's batch statistics are means over the whole
global batch, so gradients equal the single-device gradients up to floating-point summation order
(Xu et al., "GSPMD", 2021). This is not the per-device BatchNorm of PyTorch's
``DataParallel``/``DistributedDataParallel``, a deliberate departure: results do not depend on
the number of devices.

Several hosts (processes) use the same code: :func:`initialize` calls
``jax.distributed.initialize``; the mesh then spans every process's devices, and each process
passes only its own rows of the global batch (:func:`process_rows`) to :func:`shard_batch`, which
assembles the global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnas.errors import JaxnasError

__all__ = ["AXIS", "initialize", "barrier", "make_mesh", "replicated", "batch_sharding", "check_batch_size",
           "process_rows", "shard_batch", "replicate", "jit_step", "to_host"]

AXIS = "data"


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               local_device_ids: Optional[list] = None) -> None:
  """Joins a multi-process run: ``jax.distributed.initialize`` with these arguments.

  Call it once per process before any other JAX call. On SLURM or a Cloud TPU pod,
  ``jax.distributed.initialize()`` without arguments finds them itself; pass them explicitly
  elsewhere (e.g. two processes on one machine in the tests).
  """
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise JaxnasError(f"process id {process_id} must be in 0..{num_processes - 1} for "
                      f"{num_processes} processes")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)


def barrier(name: str, timeout_s: float = 1800.0) -> None:
  """Waits until every process reaches ``barrier(name)`` (nothing with one process).

  It waits in the coordination service, not in a collective: XLA:CPU's gloo collectives give up
  after 30 s when one process reaches the first collective later than another (e.g. after a
  slower compile on a loaded machine), so compile first, then meet here, then run.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client of jax.distributed.initialize
  distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh named ``"data"`` over ``num_devices`` devices of every process (default: all).

  With several processes, each contributes its first ``num_devices`` local devices, so the mesh
  holds ``num_devices × process_count`` devices.

  Raises:
    JaxnasError: if ``num_devices`` is not in ``1 .. local device count``.
  """
  available = jax.local_device_count()
  n = available if num_devices is None else num_devices
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= available:
    raise JaxnasError(f"--devices {num_devices} is not possible: this process sees {available} "
                      f"device(s) ({jax.default_backend()}); choose 1..{available}")
  devices = []
  for p in range(jax.process_count()):
    devices += [d for d in jax.devices() if d.process_index == p][:n]
  return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a whole copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Split axis ``batch_axis`` over the mesh (``batch_axis = 1`` for per-seed stacked batches)."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """A one-line JaxnasError unless ``batch_size`` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if batch_size % n:
    raise JaxnasError(f"batch size {batch_size} does not split over {n} devices; choose a "
                      f"--batch-size divisible by {n} or other --devices")


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process reads: its devices' contiguous block.

  Devices are ordered by process in :func:`make_mesh`, so process ``p`` of ``P`` holds rows
  ``[p·B/P, (p+1)·B/P)``; with one process, the whole batch.
  """
  check_batch_size(batch_size, mesh)
  per_process = batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_batch(local_batch, mesh: Mesh, *, batch_axis: int = 0):
  """The global batch, split over ``mesh``, from this process's rows (a pytree of NumPy arrays).

  With one process ``local_batch`` is the whole batch. With several, each passes its
  :func:`process_rows` and the global array is their concatenation along ``batch_axis``.
  """
  sharding = batch_sharding(mesh, batch_axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def replicate(tree, mesh: Mesh):
  """``tree`` (the same values in every process) with every leaf replicated over ``mesh``.

  With several processes each leaf is assembled from this process's copy
  (``jax.make_array_from_callback``); PRNG keys travel as their key data.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(put, tree)


def jit_step(step: Callable, mesh: Mesh, *, batch_axis: int = 0, donate: bool = True):
  """``step(state, train_batch, val_batch) -> (state, metrics)`` jitted for ``mesh``.

  State and metrics replicated, batches split along ``batch_axis``; the state's buffers are
  donated (``donate_argnums=0``), so XLA updates them in place instead of holding two copies.
  """
  rep, data = replicated(mesh), batch_sharding(mesh, batch_axis)
  return jax.jit(step, in_shardings=(rep, data, data), out_shardings=(rep, rep),
                 donate_argnums=0 if donate else ())


def to_host(tree):
  """NumPy copies of a pytree of replicated arrays, in any process (no cross-process gather)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
