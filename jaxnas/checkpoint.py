"""Checkpoints that survive a kill: any pytree state plus a small JSON record of the loop position.

A checkpoint is one directory ``DIR/<step>/`` written by orbax (``orbax-checkpoint``) with two
items: ``state``, the pytree (arrays; typed PRNG keys are stored as their key data), and ``meta``,
a JSON object holding the caller's *position* record (where the loop is: step, data position, any
host-side history) together with a signature of the state (key path, shape and dtype of every leaf)
and a BLAKE2b digest of its bytes. Orbax writes into a temporary directory and renames it when the
write is complete, so a process killed mid-save (SIGKILL included) leaves the earlier checkpoints
as they were and no half checkpoint under a step name; leftover temporary directories are removed
when the next :class:`Checkpoints` opens the directory. Only the newest ``keep`` checkpoints stay.

Restoring checks, before anything is loaded, that the checkpoint holds a state of the same shape as
the template it is restored into, and afterwards that the bytes match the digest written with them;
either failure is a one-line :class:`~jaxnas.errors.JaxnasError` naming the checkpoint's path, and
nothing on disk is changed.

The API is generic (``jaxnas search`` uses it for its :class:`~jaxnas.search.SearchState`;
``jaxnas train`` or any loop can use it for its own state)::

    from jaxnas import checkpoint
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", keep=3)
    ckpts.save(step, state, {"step": step, "history": [...]})   # after the step is done
    ...
    step = ckpts.latest_step()                                  # None when there is none
    state, position = ckpts.restore(template_state, step)       # template: same shapes/dtypes
    ckpts.close()

Arrays inside a position record are kept bit for bit by :func:`encode` / :func:`decode` (base64 of
the raw bytes); plain JSON values (NaN and infinities included) pass through unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import pathlib
import sys
from typing import Any, Optional

import jax
import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["Checkpoints", "encode", "decode", "signature", "digest", "FORMAT"]

FORMAT = 1  # version of the meta record's layout
_ARRAY_TAG = "__ndarray__"


def _is_key(leaf) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _dtype(leaf) -> np.dtype:
  return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def _storable(tree):
  """``tree`` with every typed PRNG key replaced by its raw key data (uint32)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def signature(tree) -> list:
  """``[[key path, shape, dtype], ...]`` of the leaves of ``tree`` as stored (keys as key data).

  Two states can be restored into one another exactly when their signatures are equal.
  """
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(_storable(tree))[0]:
    out.append([jax.tree_util.keystr(path), list(np.shape(leaf)), str(_dtype(leaf))])
  return out


def digest(tree) -> str:
  """BLAKE2b-128 hex digest of the bytes of every leaf of ``tree`` (stored form), in leaf order."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree.leaves(jax.device_get(_storable(tree))):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def encode(value):
  """``value`` (nested dicts, lists, tuples, scalars, NumPy/JAX arrays) as JSON values.

  Arrays become ``{"__ndarray__": base64 of the raw bytes, "dtype": ..., "shape": [...]}`` so that
  :func:`decode` returns them bit for bit; NumPy scalars become Python numbers; tuples become lists.
  """
  if isinstance(value, dict):
    return {str(k): encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [encode(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    array = np.ascontiguousarray(jax.device_get(value))
    return {_ARRAY_TAG: base64.b64encode(array.tobytes()).decode("ascii"),
            "dtype": array.dtype.str, "shape": list(array.shape)}
  if isinstance(value, np.generic):
    return value.item()
  return value


def decode(value):
  """The inverse of :func:`encode` (tuples come back as lists)."""
  if isinstance(value, dict):
    if _ARRAY_TAG in value:
      raw = base64.b64decode(value[_ARRAY_TAG])
      return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    return {k: decode(v) for k, v in value.items()}
  if isinstance(value, list):
    return [decode(v) for v in value]
  return value


def _drop_late_loop_callbacks() -> None:
  """Installs (once) a ``sys.unraisablehook`` filter for one report that follows a failed read.

  When one array of a damaged checkpoint cannot be read, orbax closes its event loop while
  tensorstore still finishes the other reads; their callbacks then find the loop closed and each
  reports ``RuntimeError('Event loop is closed')`` as an unraisable exception, a traceback on
  stderr after our one-line error. The filter drops exactly those reports and passes every other
  one to the hook that was there before.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_jaxnas_loop_filter", False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  hook._jaxnas_loop_filter = True
  sys.unraisablehook = hook


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  text = text[0] if text else ""
  text = text if len(text) <= 160 else text[:157] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Checkpoints:
  """The checkpoints of one run in ``directory`` (created if needed), the newest ``keep`` kept.

  Args:
    directory: where the step directories go, e.g. ``RUN_DIR/checkpoints``.
    keep: how many of the newest checkpoints to keep (older ones are deleted after a save).

  Raises:
    JaxnasError: if ``keep`` is not a whole number ≥ 1.
  """

  def __init__(self, directory, *, keep: int = 3):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise JaxnasError(f"--keep must be a whole number ≥ 1 (checkpoints kept), got {keep!r}")
    import orbax.checkpoint as ocp  # noqa: PLC0415  (import cost only where checkpoints are used)
    self._ocp = ocp
    self.directory = pathlib.Path(directory).absolute()
    self.keep = keep
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    local = {}
    if jax.process_count() > 1:
      # A multi-process search writes from process 0 alone (host copies of the replicated
      # state): orbax's cross-process barriers must then involve only this process.
      me = jax.process_index()
      self.directory.mkdir(parents=True, exist_ok=True)
      local = dict(multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not local,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True, **local)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list:
    """The steps with a complete checkpoint, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest checkpointed step, or None when there is none."""
    steps = self.steps()
    return steps[-1] if steps else None

  def path(self, step: int) -> pathlib.Path:
    """The directory of the checkpoint of ``step``."""
    return self.directory / str(int(step))

  def save(self, step: int, state, position: dict) -> pathlib.Path:
    """Writes ``state`` and ``position`` as the checkpoint of ``step``; returns its directory.

    Blocks until the checkpoint is complete on disk (it is then renamed into place), then deletes
    checkpoints beyond the newest ``keep``. ``state`` is read, not consumed: a jitted step may
    donate it afterwards.

    Args:
      step: the loop step the state belongs to (a whole number ≥ 0, larger than the last saved).
      state: any pytree of arrays (typed PRNG keys allowed).
      position: a dict of JSON values and arrays (see :func:`encode`): where the loop is.
    """
    ocp = self._ocp
    stored = _storable(state)
    if jax.process_count() > 1:  # orbax refuses one process's jax.Arrays then: NumPy copies
      stored = jax.device_get(stored)
    meta = {"format": FORMAT, "step": int(step), "signature": signature(stored),
            "digest": digest(stored), "position": encode(position)}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(stored), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()
    return self.path(step)

  def restore(self, like, step: Optional[int] = None):
    """``(state, position)`` of the checkpoint of ``step`` (default: the newest).

    Args:
      like: a state of the run's shapes and dtypes (e.g. a freshly initialised one); its typed
        PRNG keys give the key implementation, its first leaf's device the placement.
      step: which checkpoint; None for the newest.

    Returns:
      The state, with ``like``'s tree structure, every leaf committed to ``like``'s device, and
      the position record as saved (arrays decoded).

    Raises:
      JaxnasError: one line naming the checkpoint's path if there is no such checkpoint, if it
        holds a state of other shapes or dtypes, or if it cannot be read or does not match its
        digest (damaged or truncated).
    """
    ocp = self._ocp
    steps = self.steps()
    if step is None:
      if not steps:
        raise JaxnasError(f"no checkpoint in {self.directory}; nothing to resume from")
      step = steps[-1]
    path = self.path(step)
    if step not in steps:
      raise JaxnasError(f"no checkpoint {path}; the checkpoints there are steps "
                        + (", ".join(map(str, steps)) or "none"))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta["meta"]
      if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"no jaxnas checkpoint record of format {FORMAT}")
    except Exception as e:  # orbax and tensorstore raise many kinds; all mean the same here
      raise JaxnasError(f"checkpoint {path} cannot be read ({_one_line(e)}); it is damaged: "
                        f"delete it to resume from an earlier one") from None
    stored_like = _storable(like)
    expected, found = signature(stored_like), meta.get("signature")
    if expected != found:
      raise JaxnasError(f"checkpoint {path} holds a state of another configuration "
                        f"({_first_difference(found, expected)}); resume with the "
                        "configuration that wrote it")
    leaves = jax.tree.leaves(stored_like)
    device = (next(iter(leaves[0].devices())) if leaves and isinstance(leaves[0], jax.Array)
              else jax.devices()[0])
    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=sharding),
        stored_like)
    _drop_late_loop_callbacks()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:
      raise JaxnasError(f"checkpoint {path} cannot be read ({_one_line(e)}); it is damaged: "
                        f"delete it to resume from an earlier one") from None
    if digest(restored) != meta.get("digest"):
      raise JaxnasError(f"checkpoint {path} is damaged (its arrays do not match the digest "
                        "written with them); delete it to resume from an earlier one")
    state = jax.tree.map(
        lambda r, x: jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if _is_key(x) else r,
        restored, like)
    state = jax.device_put(state, device)
    return state, decode(meta["position"])

  def close(self) -> None:
    """Releases orbax's resources (the checkpoints stay on disk)."""
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _first_difference(found, expected) -> str:
  """The first leaf where two signatures differ, in words."""
  if not isinstance(found, list):
    return "no state signature"
  found_map = {tuple(s)[0]: s for s in found}
  for path, shape, dtype in expected:
    if path not in found_map:
      return f"it has no leaf {path}"
    _, f_shape, f_dtype = found_map[path]
    if list(f_shape) != list(shape) or f_dtype != dtype:
      return (f"{path} is {f_dtype}{tuple(f_shape)} there, this run expects "
              f"{dtype}{tuple(shape)}")
  extra = [s[0] for s in found if s[0] not in {e[0] for e in expected}]
  return f"it has leaves this run does not: {extra[0]}" if extra else "a different leaf order"
