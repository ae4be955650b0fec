"""Resumable, reproducible training: atomic checkpoints, the full training state, per-epoch seeds.

A bundle's ``train.json`` attaches three handlers from here to the trainer:

- :class:`EpochSeedHandler` re-seeds every random number generator from ``(seed, epoch)`` at the start
  of each epoch, so an epoch's shuffling, augmentation and dropout depend on nothing but the seed and
  the epoch number: a run resumed at epoch ``k`` replays epochs ``k+1...`` exactly as an uninterrupted
  run would (on CPU; see docs/robustness.md for GPUs);
- :class:`TrainingCheckpoint` writes ``models/last.pt`` atomically at the end of every epoch with
  everything a resumed run needs (model, optimizer, LR scheduler, epoch and iteration, best validation
  metric, early-stopping counter, the best-checkpoint tracker and the learning-curve history) and, with
  ``resume=True``, loads it back before the first epoch;
- :class:`TrainingFaultHandler` turns a non-finite loss into a clear stop, and any failure into one
  message that says what is saved on disk and the command line that resumes.

:class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` whose files appear complete or not at all
(MONAI writes them in place, so a kill during ``torch.save`` leaves a truncated ``model.pt``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver, EarlyStopHandler
from torch.nn.parallel import DataParallel, DistributedDataParallel

from monai_ms.engines.training.lesion_pathway import provenance_path
from monai_ms.errors import UserError, stop_or_raise
from monai_ms.io import atomic_path, write_json

__all__ = [
    "LAST_CHECKPOINT",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "EpochSeedHandler",
    "TrainingCheckpoint",
    "TrainingFaultHandler",
    "WarmupEarlyStopHandler",
    "StartValidationHandler",
    "NonFiniteLossError",
    "ResumeError",
    "check_resume",
    "check_writable",
    "save_checkpoint",
]

LAST_CHECKPOINT = "last.pt"
RESUME_HINT = "add --resume True to the same command to continue from it"
logger = logging.getLogger(__name__)


class ResumeError(UserError, RuntimeError):
    """A resume was asked for but there is nothing (valid) to resume from."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: a temporary file in the same folder, flushed, then renamed.

    A kill or a full disk during the write leaves the previous file (if any) untouched and no partial one.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())  # the rename must not reach the disk before the data
    return Path(path)


class AtomicDiskSaver(BaseSaveHandler):
    """An ignite save handler writing each checkpoint with :func:`save_checkpoint`.

    Args:
        dirname: folder of the checkpoints.
        filename: a fixed file name (e.g. ``model.pt``) instead of the name ignite derives.
        provenance: written beside each checkpoint as ``<stem>.provenance.json`` (see
            :func:`monai_ms.engines.training_provenance`), after the checkpoint itself.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, provenance: Mapping | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.provenance = provenance

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        path = save_checkpoint(checkpoint, self.dirname / (self.filename or filename))
        if self.provenance is not None:
            write_json(dict(self.provenance), provenance_path(path))

    def remove(self, filename: str) -> None:
        # ignite removes the previous best before saving the new one; a fixed name is replaced by the
        # atomic rename instead, so there is never a moment without a best model on disk
        if self.filename is None:
            (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) with atomic writes.

    The key-metric tracker (which score the saved ``model.pt`` has) is part of the training state
    saved by :class:`TrainingCheckpoint`, so a resumed run only replaces ``model.pt`` with a better one.

    Args:
        enabled: attach at all (``False`` on DDP ranks other than 0). Unlike ``_disabled_`` the object
            still exists, so configs can refer to it from the training state on every rank.
        provenance: a record of the training run (its subjects and manifest, from
            :func:`monai_ms.engines.training_provenance`) written beside every checkpoint, so a model
            can later be checked against the splits of another run.
    """

    def __init__(self, *args: Any, enabled: bool = True, provenance: Mapping | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.enabled = bool(enabled)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed_name = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed_name, provenance)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def state_dict(self) -> dict[str, Any]:
        checkpoint = self._key_metric_checkpoint
        return checkpoint.state_dict() if checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class WarmupEarlyStopHandler(EarlyStopHandler):
    """``monai.handlers.EarlyStopHandler`` whose patience starts counting after a warm-up.

    During the first ``warmup_epochs`` trainer epochs neither the best score nor the patience counter
    moves, so one noisy early spike of a near-zero metric (a segmentation Dice of 0.14 at epoch 3, then
    0.0 while the network finds the lesions) cannot set the bar that ends the run. The best checkpoint
    is still chosen over all epochs by the checkpoint saver.

    Args:
        patience: validations without improvement, counted after the warm-up, before stopping.
        score_function: ``engine -> float``, higher is better.
        warmup_epochs: trainer epochs ignored by the stopping rule (0: MONAI's handler).
        kwargs: the other arguments of ``EarlyStopHandler``.
    """

    def __init__(self, patience: int, score_function: Any, warmup_epochs: int = 0, **kwargs: Any) -> None:
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        super().__init__(patience=patience, score_function=score_function, **kwargs)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, engine: Engine) -> None:
        trainer = None if self._handler is None else self._handler.trainer
        if trainer is not None and trainer.state.epoch <= self.warmup_epochs:
            return
        super().__call__(engine)


class StartValidationHandler:
    """Validate once before the first epoch of a fresh run: the fitted start competes for the best checkpoint.

    The brain_age and sex networks start as a linear model fitted on the training split (their feature path,
    :func:`monai_ms.engines.fit_feature_paths`, with the MLP's last layer at zero). Without this handler the
    first candidate for ``model.pt`` is the model after one epoch of CNN training; with it, the fitted start
    is scored on the validation split too, so training that only makes the model worse (validation MAE
    6.7 -> 14.4 years over 11 epochs in one generalisation-suite run) can never be what is saved. The
    learning curve gets an epoch-0 row; early stopping ignores it (its warm-up counts from epoch 1). A
    resumed run (epoch > 0) does not validate again.

    Args:
        validator: the validation engine (the one the checkpoint saver and the learning curve watch).
        enabled: False turns it into a no-op (a config switch).
    """

    def __init__(self, validator: Engine, enabled: bool = True) -> None:
        self.validator = validator
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.enabled and engine.state.epoch == 0:
            self.validator.run(engine.state.epoch)


class EpochSeedHandler:
    """Seed torch, numpy, ``random`` and the datasets' random transforms from ``seed + epoch``.

    Runs at each ``EPOCH_STARTED``, before the epoch's ``DataLoader`` iterator (shuffle order, worker
    seeds) is created. With ``num_workers > 0`` the workers' transforms are seeded by MONAI's
    ``worker_init_fn`` from the torch seed set here; with ``num_workers=0`` the ``datasets``' own
    transforms are re-seeded.

    Args:
        seed: the run's seed.
        datasets: datasets whose transforms draw random numbers in the main process.
    """

    def __init__(self, seed: int, datasets: Any = ()) -> None:
        self.seed = int(seed)
        self.datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = (self.seed + 1_000_003 * engine.state.epoch) % (2**32)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for dataset in self.datasets:
            set_rnd(dataset, seed)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, recursively, so the file loads with ``weights_only=True``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _restore_engine_state(engine: Engine, state: Mapping[str, Any]) -> None:
    """Set epoch and iteration from ``state``; keep a larger ``max_epochs`` the resumed run asks for."""
    max_epochs = engine.state.max_epochs
    engine.load_state_dict({k: state[k] for k in ("epoch", "epoch_length", "max_epochs") if k in state})
    engine.state.iteration = int(state["iteration"])
    if max_epochs is not None:
        if engine.state.epoch > max_epochs:
            raise ResumeError(
                f"the checkpoint is at epoch {engine.state.epoch}, past this run's epochs={max_epochs}; "
                "raise --epochs to train longer"
            )
        engine.state.max_epochs = max_epochs


class TrainingCheckpoint:
    """Save the whole training state to ``save_dir/last.pt`` after every epoch; load it to resume.

    Attach to the trainer after the ``ValidationHandler`` (so the epoch's validation, early-stopping and
    best-checkpoint decisions are in the saved state). Only rank 0 saves (``save=main_process``); every
    rank loads.

    Args:
        save_dir: folder of ``last.pt`` (the bundle's ``ckpt_dir``).
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, LR scheduler,
            ``AtomicCheckpointSaver``, ``LearningCurveHandler``), plus optionally the validation engine
            (its best metric and epoch) and the ``EarlyStopHandler`` (its counter and best score).
            The trainer this handler is attached to is saved as ``"trainer"``.
        resume: load ``last.pt`` at the start of the run (``ResumeError`` when it is missing).
        save: write the file (``False`` on ranks other than 0).
        map_location: ``torch.load`` device for the loaded tensors.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        save: bool = True,
        map_location: Any = None,
    ) -> None:
        self.path = Path(save_dir) / LAST_CHECKPOINT
        # checkpoints hold the bare network, loadable without DDP (as MONAI's CheckpointSaver does)
        self.save_dict = {
            name: obj.module if isinstance(obj, (DataParallel, DistributedDataParallel)) else obj
            for name, obj in save_dict.items()
            if obj is not None
        }
        self.resume = bool(resume)
        self.save = bool(save)
        self.map_location = map_location
        self.resumed_from: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def state_dict(self, engine: Engine) -> dict[str, Any]:
        trainer = engine.state
        state: dict[str, Any] = {
            "trainer": {
                "epoch": trainer.epoch,
                "iteration": trainer.iteration,
                "epoch_length": trainer.epoch_length,
                "max_epochs": trainer.max_epochs,
            }
        }
        for name, obj in self.save_dict.items():
            if isinstance(obj, Engine):
                state[name] = {
                    "best_metric": getattr(obj.state, "best_metric", None),
                    "best_metric_epoch": getattr(obj.state, "best_metric_epoch", None),
                }
            elif isinstance(obj, EarlyStopHandler):
                state[name] = obj._handler.state_dict() if obj._handler is not None else {}
            else:
                state[name] = obj.state_dict()
        return _plain(state)

    def write(self, engine: Engine) -> None:
        """Save the state after epoch ``engine.state.epoch`` (atomically; see :func:`save_checkpoint`)."""
        try:
            save_checkpoint(self.state_dict(engine), self.path)
        except OSError as error:
            raise OSError(
                f"could not write the training checkpoint {self.path}: {error.strerror or error}. "
                "The previous checkpoint (if any) is unchanged; free space or fix the folder, then resume."
            ) from error

    def load(self, engine: Engine) -> None:
        """Restore every object of ``save_dict`` and the trainer's epoch from ``last.pt``."""
        state = read_last_checkpoint(self.path, map_location=self.map_location)
        for name, obj in self.save_dict.items():
            if name not in state:
                raise ResumeError(f"{self.path}: has no '{name}' state to resume (saved by another config?)")
            if isinstance(obj, Engine):
                for key, value in state[name].items():
                    setattr(obj.state, key, value)
            elif isinstance(obj, EarlyStopHandler):
                if obj._handler is None:
                    raise ResumeError("call early_stop.set_trainer(trainer) before the run so its state can be restored")
                if state[name]:
                    obj._handler.load_state_dict(state[name])
            else:
                obj.load_state_dict(state[name])
        _restore_engine_state(engine, state["trainer"])
        self.resumed_from = engine.state.epoch
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch} of {engine.state.max_epochs}")


def read_last_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """Load ``last.pt`` with ``weights_only=True``; ``ResumeError`` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no checkpoint to resume from (it is written at the end of each epoch)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ResumeError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "trainer" not in state:
        raise ResumeError(f"{path}: not a monai_ms training checkpoint (no 'trainer' state)")
    return state


def check_resume(ckpt_dir: str | os.PathLike, resume: bool) -> bool:
    """Before a run: with ``resume``, check ``last.pt`` is usable; without, say what it will replace.

    Under ``python -m monai.bundle`` a missing or damaged checkpoint exits with status 1 and one line.

    Returns:
        True.
    """
    path = Path(ckpt_dir) / LAST_CHECKPOINT
    if resume:
        try:
            state = read_last_checkpoint(path)
        except ResumeError as error:
            _stop(f"cannot resume: {error}")
        trainer = state["trainer"]
        logger.info(f"resuming {path}: epoch {trainer['epoch']} of {trainer.get('max_epochs')} done")
    elif path.is_file():
        logger.warning(f"{path} from an earlier run will be replaced; to continue that run instead, {RESUME_HINT}")
    return True


def check_writable(*folders: str | os.PathLike) -> bool:
    """Before a run: create each output folder and write a probe file, so an unwritable folder or a
    full disk stops the run before the first epoch rather than after it.

    Returns:
        True.
    """
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with atomic_path(Path(folder) / ".write_test") as probe:
                probe.write_bytes(b"0" * 4096)
            (Path(folder) / ".write_test").unlink()
        except OSError as error:
            _stop(f"cannot write to the output folder {folder}: {error.strerror or error}; nothing was trained yet")
    return True


def _stop(message: str) -> None:
    stop_or_raise(ResumeError(message))  # one line and exit 1 under the bundle command line, else raise


class TrainingFaultHandler:
    """Stop on a non-finite loss, and on any failure say what is saved and how to resume.

    Args:
        ckpt_dir: the bundle's ``ckpt_dir`` (``last.pt`` and ``model.pt``).
        loss_transform: maps ``engine.state.output`` to the scalar loss (``loss_from_output``).
        main_process: print the message (rank 0 only).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, loss_transform: Any = None, main_process: bool = True) -> None:
        from monai_ms.engines.handlers.common import loss_from_output

        self.ckpt_dir = Path(ckpt_dir)
        self.loss_transform = loss_transform or loss_from_output
        self.main_process = main_process

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.check_loss)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.report)

    def check_loss(self, engine: Engine) -> None:
        loss = float(self.loss_transform(engine.state.output))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "the weights of this epoch are not saved. Lower --learning_rate (or check the inputs), then resume"
            )

    def saved_summary(self) -> str:
        """One line per file a user can go back to."""
        lines = []
        last = self.ckpt_dir / LAST_CHECKPOINT
        if last.is_file():
            try:
                epoch = read_last_checkpoint(last)["trainer"]["epoch"]
                lines.append(f"  {last}: the state after epoch {epoch} ({RESUME_HINT})")
            except ResumeError as error:
                lines.append(f"  {error}")
        best = self.ckpt_dir / "model.pt"
        if best.is_file():
            lines.append(f"  {best}: the best validation model so far")
        return "\n".join(lines) or f"  nothing yet in {self.ckpt_dir} (the first epoch did not complete)"

    def report(self, engine: Engine, error: BaseException) -> None:
        if self.main_process and not isinstance(error, KeyboardInterrupt):
            logger.error(
                f"training stopped at epoch {engine.state.epoch}: {type(error).__name__}: {error}\n"
                f"saved:\n{self.saved_summary()}"
            )
        raise error
