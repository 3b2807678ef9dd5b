"""TensorBoard scalars of a run, written with tensorboardX (no TensorFlow) and read back without it.

:class:`ScalarWriter` writes one scalar per finite number in a step's metrics (losses, accuracies,
learning rate, gradient norms, mixing-weight entropy, regulariser values, the Hessian eigenvalue on
the steps that compute it, ...) under the metric's own name as the tag, so the tags are the keys of
``metrics.jsonl``. The events file (``events.out.tfevents.*``) lies in the run directory itself:
``tensorboard --logdir RUN_DIR`` (or a parent folder holding several runs) shows it.

A resumed run opens a new events file with ``purge_step`` set to the step it resumes from, which
tells TensorBoard to drop the earlier file's events at or after that step (those the killed
process wrote after its last checkpoint), so no step is shown twice.

:func:`read_scalars` reads events files back (TFRecord framing, then the ``Event`` protobuf that
tensorboardX ships), for tests and scripts that have no TensorBoard installed.
"""

from __future__ import annotations

import math
import pathlib
import struct
import time
from typing import Optional

__all__ = ["ScalarWriter", "read_scalars", "event_files"]

# Metrics that are bookkeeping, not curves.
_SKIPPED = ("step", "epoch", "time_s", "nonfinite", "hvp_passes")


class ScalarWriter:
  """Writes the scalar metrics of a run's steps to a TensorBoard events file in ``logdir``.

  Writes are synchronous (tensorboardX's ``EventsWriter``, not its ``SummaryWriter``, whose queue
  and background thread may still hold events when a process is killed): after :meth:`flush`, every
  event written so far is on disk. The search flushes before each checkpoint, so a resumed run's
  curves have no gap.

  Args:
    logdir: the run directory.
    purge_step: for a resumed run, the first step it will write (see the module docstring); None
      for a fresh run.
  """

  def __init__(self, logdir, *, purge_step: Optional[int] = None):
    from tensorboardX.event_file_writer import EventsWriter  # noqa: PLC0415
    from tensorboardX.proto import event_pb2, summary_pb2  # noqa: PLC0415
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    # The suffix keeps a resumed run's file apart from one opened in the same second.
    self._writer = EventsWriter(str(pathlib.Path(logdir) / "events"),
                                f".from{purge_step or 0}")
    if purge_step is not None:  # as tensorboardX's SummaryWriter(purge_step=...) marks it
      self._writer.write_event(event_pb2.Event(step=int(purge_step), file_version="brain.Event:2"))
      self._writer.write_event(event_pb2.Event(
          step=int(purge_step), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def scalars(self, step: int, metrics: dict) -> None:
    """One scalar per finite real number in ``metrics`` (Python scalars), tagged by its key."""
    values = [self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in metrics.items()
              if tag not in _SKIPPED and not isinstance(value, bool)
              and isinstance(value, (int, float)) and math.isfinite(value)]
    if values:
      self._writer.write_event(self._event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=self._summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    """Puts every event written so far on disk."""
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _order(path: pathlib.Path):
  """Sort key of an events file: its timestamp, then the step a :class:`ScalarWriter` started at."""
  name = path.name[len("events.out.tfevents."):]
  stamp, _, rest = name.partition(".")
  start = rest.rpartition(".from")[2]
  return (int(stamp) if stamp.isdigit() else 0, int(start) if start.isdigit() else 0, name)


def event_files(logdir) -> list:
  """The events files directly in ``logdir``, oldest first."""
  return sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"), key=_order)


def _records(path):
  """The payloads of a TFRecord file: ``uint64 length, uint32 crc, data, uint32 crc`` each.

  The checksums are not verified; a record cut short at the end (a killed writer) ends the file.
  """
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def read_scalars(logdir) -> dict:
  """``{tag: [(step, value), ...]}`` from every events file in ``logdir``, in file order.

  Honours purge events: a file that starts with a ``SessionLog.START`` at step ``s`` (a resumed
  run's writer) drops the values at steps ≥ ``s`` that earlier files hold, as TensorBoard does.
  """
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  out = {}
  for path in event_files(logdir):
    for data in _records(path):
      event = event_pb2.Event()
      event.ParseFromString(data)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        out = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in out.items()}
      if event.HasField("summary"):
        for value in event.summary.value:
          if value.HasField("simple_value"):
            out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return out
