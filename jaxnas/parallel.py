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
assembles the global array with ``jax.make_array_from_process_local_data``. ``jaxnas search
--coordinator ADDR:PORT --num-processes N --process-id I`` (or ``--distributed auto``) does this
from the command line (:func:`distributed_options`); only process 0 writes the run directory
(:func:`writes_files`), from its own copy of the replicated state (:func:`local_copy`), and tells
the others the outcome of what only it does, errors included (:func:`on_process_0`).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnas.errors import JaxnasError

__all__ = ["AXIS", "initialize", "distributed_options", "barrier", "make_mesh", "replicated",
           "batch_sharding", "check_batch_size", "process_rows", "shard_batch", "replicate",
           "jit_step", "compile_then_meet", "to_host", "local_copy", "writes_files",
           "on_process_0"]

AXIS = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, local_device_ids: Optional[list] = None) -> None:
  """Joins a multi-process run: ``jax.distributed.initialize`` with these arguments.

  Call it once per process before anything touches a device. On SLURM, Open MPI or a Cloud TPU
  pod, arguments left None are found by JAX from the cluster's environment (all None:
  ``jax.distributed.initialize()``); pass them explicitly elsewhere (e.g. two processes on one
  machine in the tests). Process ``p`` of ``P`` then reads rows ``[p·B/P, (p+1)·B/P)`` of every
  global batch of ``B`` (:func:`process_rows`).

  Raises:
    JaxnasError: one line, for a process id outside ``0 .. num_processes - 1`` or when joining
      fails (no coordinator at the address, no cluster found, JAX already started).
  """
  if num_processes is not None and num_processes < 1:
    raise JaxnasError(f"--num-processes must be a whole number ≥ 1, got {num_processes}")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise JaxnasError(f"process id {process_id} must be in 0..{num_processes - 1} for "
                      f"{num_processes} processes")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
  except Exception as e:  # ValueError (nothing found), RuntimeError, XlaRuntimeError (timeouts)
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise JaxnasError(f"cannot join the distributed run ({text}); check --coordinator, "
                      "--num-processes and --process-id, and that process 0 runs") from None


def distributed_options(coordinator: Optional[str], num_processes: Optional[int],
                        process_id: Optional[int], mode: Optional[str]) -> Optional[dict]:
  """The keyword arguments of :func:`initialize` the command line asks for; None: one process.

  ``--coordinator ADDR:PORT --num-processes N --process-id I`` must come together (every process
  gets the same address and count, its own id); ``--distributed auto`` lets JAX find whatever of
  them is not given (SLURM, Open MPI, Cloud TPU pods). Checked before anything starts, so bad
  input is one line and no process waits for a coordinator that will not come.

  Raises:
    JaxnasError: for an incomplete or impossible combination, in one line saying what to change.
  """
  given = {name: value for name, value in (("coordinator_address", coordinator),
                                           ("num_processes", num_processes),
                                           ("process_id", process_id)) if value is not None}
  if mode is None and not given:
    return None
  if mode not in (None, "auto"):
    raise JaxnasError(f"--distributed takes 'auto' (find the processes on SLURM or a TPU pod), "
                      f"got {mode!r}")
  if num_processes is not None and num_processes < 1:
    raise JaxnasError(f"--num-processes must be a whole number ≥ 1, got {num_processes}")
  if process_id is not None and process_id < 0:
    raise JaxnasError(f"--process-id must be a whole number ≥ 0, got {process_id}")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise JaxnasError(f"--process-id {process_id} is not one of the {num_processes} processes; "
                      f"give each process an id in 0..{num_processes - 1}")
  if coordinator is not None:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise JaxnasError(f"--coordinator {coordinator!r}: write ADDR:PORT, the address of process "
                        "0 and a free port, e.g. 10.0.0.1:1234")
  if mode is None:
    missing = [flag for flag, value in (("--coordinator ADDR:PORT", coordinator),
                                        ("--num-processes N", num_processes),
                                        ("--process-id I", process_id)) if value is None]
    if missing:
      raise JaxnasError(f"a multi-process run needs {' and '.join(missing)} as well (or "
                        "--distributed auto on SLURM or a TPU pod, where JAX finds them)")
  return given


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


def on_process_0(fn: Callable[[], str], name: str, timeout_s: float = 1800.0) -> str:
  """``fn()`` run by process 0 alone, its result (a string) or its one-line error in every process.

  What only process 0 does (creating the run directory) can fail there alone; the others would
  then wait for it at the next barrier until JAX's coordination service gives up. Process 0
  publishes the outcome under ``name`` in the coordination service's key-value store and the
  others wait for it there, so a :class:`JaxnasError` (e.g. the run directory exists) ends every
  process with the same line. With one process, ``fn()``.

  Raises:
    JaxnasError: the one ``fn`` raised in process 0, in every process.
  """
  if jax.process_count() == 1:
    return fn()
  from jax._src import distributed  # the client of jax.distributed.initialize
  client, key = distributed.global_state.client, f"jaxnas/{name}"
  if jax.process_index() == 0:
    try:
      result = fn()
    except JaxnasError as e:
      client.key_value_set(key, "error:" + str(e))
      raise
    client.key_value_set(key, "ok:" + result)
    return result
  outcome, _, text = client.blocking_key_value_get(key, int(timeout_s * 1000)).partition(":")
  if outcome == "error":
    raise JaxnasError(text)
  return text


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


def local_copy(tree):
  """``tree`` with every array that spans several processes replaced by this process's copy.

  A replicated array of a multi-process mesh cannot be read whole by one process
  (``jax.device_get`` refuses it); its first addressable shard, on a local device, holds the whole
  value. Process 0 reads the state this way to checkpoint it and evaluate it alone. Typed PRNG keys
  go through their key data. With one process, ``tree`` itself.
  """
  if jax.process_count() == 1:
    return tree

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(get(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return x.addressable_data(0)
  return jax.tree.map(get, tree)


def writes_files() -> bool:
  """Whether this process writes the run directory: only process 0 of a multi-process run."""
  return jax.process_index() == 0


def compile_then_meet(step: Callable, *args, name: str = "compiled"):
  """``step`` compiled for ``args``; with several processes, after every process has compiled.

  XLA:CPU's gloo collectives give up after 30 s, so a process whose compile finished early must
  not wait for the others inside the step's first all-reduce: each compiles
  (``step.lower(*args).compile()``), then all meet at :func:`barrier`. With one process, ``step``
  itself (compiled on its first call, as before).
  """
  if jax.process_count() == 1:
    return step
  compiled = step.lower(*args).compile()
  barrier(name)
  return compiled
