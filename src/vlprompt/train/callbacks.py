"""Trainer callbacks: observers of the single training loop (diagnostics, loggers), declared as a Protocol.

A callback is any object with the six methods of ``Callback``; subclassing ``Callback`` gives no-op defaults,
so a user callback writes only the events it needs. The Trainer checks the protocol when it is built and calls
the events in this order for a run of E epochs::

    on_fit_start  (after the method's own ``setup``, before the first step)
    per optimizer step:  on_step_end(step)           step = optimizer steps done so far, 1, 2, ...
    per epoch, after its last step:  on_eval(epoch, accuracy)  when the validation split is scored
                                     on_epoch_end(epoch)        epoch = 0 .. E-1, as in metrics.jsonl
    on_fit_end(result)

``on_log(record)`` fires for every record the trainer logs (loss and lr every ``log_every`` steps, validation
accuracy, records callbacks log themselves), after it joined the trainer's history and metrics.jsonl. The
history is kept once, by the trainer: metrics.jsonl is the run folder's record (the report reads it, the
resume state carries it), so it is written by the loop itself and never depends on which callbacks a run
has; other sinks (TensorBoard) mirror it through ``on_log``, so they show exactly the same numbers.
Callbacks run on every rank (a distributed run's history is the same on all of them); writers act on rank 0.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from vlprompt.core.errors import ConfigError, VlpromptError, missing_extra

if TYPE_CHECKING:
    from vlprompt.data.base import TaskData
    from vlprompt.train.config import TrainConfig
    from vlprompt.train.trainer import FitResult, Trainer

TENSORBOARD_DIR = "tensorboard"


@runtime_checkable
class Callback(Protocol):
    """The events of one ``Trainer.fit``; see the module docstring for their order and numbering."""

    def on_fit_start(self, trainer: Trainer, task: TaskData) -> None:
        return None

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        return None

    def on_log(self, trainer: Trainer, record: dict) -> None:
        return None

    def on_eval(self, trainer: Trainer, epoch: int, accuracy: float) -> None:
        return None

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        return None

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        return None


EVENTS = tuple(name for name in vars(Callback) if name.startswith("on_"))


class CallbackList(Callback):
    """Several callbacks as one, called in the order given."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                missing = [name for name in EVENTS if not callable(getattr(callback, name, None))]
                raise ConfigError(
                    f"Trainer callbacks[{index}] ({type(callback).__name__}) does not follow the Callback "
                    f"protocol: it lacks {', '.join(missing)}. Subclass vlprompt.train.Callback (its events "
                    "default to doing nothing) and override the events you need."
                )
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer: Trainer, task: TaskData) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(trainer, task)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        for callback in self.callbacks:
            callback.on_step_end(trainer, step)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        for callback in self.callbacks:
            callback.on_log(trainer, record)

    def on_eval(self, trainer: Trainer, epoch: int, accuracy: float) -> None:
        for callback in self.callbacks:
            callback.on_eval(trainer, epoch, accuracy)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(trainer, epoch)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(trainer, result)


class TensorBoardCallback(Callback):
    """Every numeric field of every logged record as a TensorBoard scalar under its metrics.jsonl name
    (``loss``, ``lr``, ``val_accuracy``, ``nmi/block0``...), at the record's step; event files go to
    ``log_dir`` (a run's ``<out>/tensorboard`` when built from ``train.tensorboard=true``). Rank 0 writes."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._summary_writer = _summary_writer_class()
        self.writer = None

    def on_fit_start(self, trainer: Trainer, task: TaskData) -> None:
        if trainer.is_main and self.writer is None:
            self.writer = self._summary_writer(log_dir=str(self.log_dir))

    def on_log(self, trainer: Trainer, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if numeric and key not in ("step", "epoch"):
                self.writer.add_scalar(key, float(value), global_step=step)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        # A killed run keeps what it logged up to its last finished epoch (the resume point).
        if self.writer is not None:
            self.writer.flush()

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def config_callbacks(config: TrainConfig, out_dir: Path | None) -> list[Callback]:
    """The callbacks a TrainConfig asks for (``tensorboard``), added by the Trainer to the user's own."""
    if not config.tensorboard:
        return []
    if out_dir is None:
        raise VlpromptError("train.tensorboard = true writes event files under the run's output folder, and "
                            "this Trainer has none: pass out_dir (--out), or set tensorboard=false.")
    return [TensorBoardCallback(out_dir / TENSORBOARD_DIR)]


def _summary_writer_class():
    """torch's SummaryWriter, which needs the ``tensorboard`` package: an optional extra of vlprompt."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise missing_extra(
            "tensorboard", "tensorboard",
            "train.tensorboard = true (TensorBoard event files; metrics.jsonl holds the same numbers without it)",
        ) from error
    return SummaryWriter
