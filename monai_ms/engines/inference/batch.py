"""Batch inference at cohort scale: streamed, one bad scan does not stop the others, reruns resume.

One mechanism for every bundle's ``inference.json``. A :class:`BatchInference` object sits between the
manifest split and the evaluator:

- *resume*: each session gets a small completion record, ``<records_dir>/<session>.json``, written
  atomically after all of its output files. A session is complete when its record says so, every file
  it lists exists, and it was made from the same input files (path, size, modification time) with the
  same model files and settings (a digest of both is stored). A rerun of the same command skips complete
  sessions and redoes the rest (missing, incomplete, failed, made by another model or from a replaced
  scan); ``overwrite=True`` redoes everything. The batch tables (``lesions.csv``,
  ``predictions.csv``) are assembled from the records at the end, so they list every session of the
  split after a rerun as after a first run.
- *one bad scan*: per-file problems found by the manifest validation (unreadable or truncated NIfTI, not
  a NIfTI, NaN voxels, a T2 of another head, and its content checks: a T1 column holding a T2, a label map,
  unknown orientation, 10 mm voxels, a copy of another session's scan, ...) and any error while loading
  or preprocessing a scan (a file that disappeared after validation) turn that scan into an *error item*
  (session id + message, naming the file and the reason). Error items skip the network; the session gets
  a failed record and a row with its ``error`` in the batch table, the others get their outputs, and at
  the end the run exits with status 1 and a short message naming the failed sessions. Structurally bad
  manifests (missing keys, bad ages, duplicate sessions, an empty split) still stop the run before it
  starts.
- *bounded memory*: scans are read by a plain ``monai.data.Dataset`` (nothing cached) and written one by
  one; only the small per-session records stay on disk. A progress bar shows the scans done.

Wiring in a config (``infer#...``)::

    "batch": {"_target_": "monai_ms.engines.BatchInference", "entries": "@infer#datalist",
              "records_dir": "...", "overwrite": "@overwrite", "writers": ["@infer#writer"],
              "model_files": ["$@ckpt_dir + '/model.pt'"], "settings": {"spacing": "@spacing"}},
    "dataset": "$@infer#batch.dataset(@infer#preprocessing)",
    "dataloader": {"_target_": "DataLoader", ..., "collate_fn": "$@infer#batch.collate"},
    "evaluator": {"_target_": "SupervisedEvaluator", ..., "iteration_update": "$@infer#batch.iteration",
                  "val_handlers": [..., "@infer#writer", "@infer#batch"]},
    "initialize": [..., "$@infer#batch.validate(@data_manifest, task='edss_inference', split=@infer_split)"],
    "inferring": ["$@infer#batch.run(@infer#evaluator)"]
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine
from monai.data import Dataset, list_data_collate

from monai_ms.data.fields import IMAGE_KEYS
from monai_ms.errors import UserError, stop_or_raise
from monai_ms.io import sha256_file, sha256_json, write_json

__all__ = [
    "FAILED_KEY",
    "BatchInference",
    "BatchInferenceError",
    "FailureTolerantDataset",
    "describe_failure",
]

logger = logging.getLogger(__name__)

FAILED_KEY = "inference_error"
"""Key of an error item (and of the list of failures in a collated batch): the failure message."""

_MAX_LISTED = 20  # failed sessions named in the final message; the table has them all


class BatchInferenceError(UserError, RuntimeError):
    """Some sessions of a batch inference failed (raised from Python; the bundle CLI exits with status 1)."""


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (error.__cause__ or error.__context__) is not None and id(error.__cause__ or error.__context__) not in seen:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
        seen.add(id(error))
    return error


def _unreadable(path: str) -> str | None:
    """Why a NIfTI file cannot be read completely, or None when it can."""
    import nibabel as nib
    import numpy as np

    if not os.path.isfile(path):
        return "file not found"
    try:
        np.asanyarray(nib.load(path).dataobj)
    except Exception as error:  # noqa: BLE001 - any reader error is the answer
        return f"{type(error).__name__}: {error}"
    return None


def describe_failure(error: BaseException, entry: Mapping[str, Any], image_keys: Sequence[str] = IMAGE_KEYS) -> str:
    """A one-line message for a scan that failed: the file (key and path) and the reason.

    MONAI wraps a transform's error in ``RuntimeError("applying transform <...>")``; the message uses the
    innermost error. When that error does not name one of the scan's files (a truncated gzip reports only
    ``EOFError``), the scan's files are read again to find the one that fails.

    Args:
        error: the exception raised while loading or preprocessing the scan.
        entry: the manifest entry of the scan (image paths under ``image_keys``).
        image_keys: entry keys holding image paths.

    Returns:
        e.g. ``"t1 /data/T1/sub-01_T1.nii.gz: EOFError: Compressed file ended before the end-of-stream
        marker was reached"``.

    Examples:
        >>> describe_failure(FileNotFoundError("No such file: '/d/a_T1.nii.gz'"), {"t1": "/d/a_T1.nii.gz"})
        "t1 /d/a_T1.nii.gz: FileNotFoundError: No such file: '/d/a_T1.nii.gz'"
    """
    root = _root_cause(error)
    reason = f"{type(root).__name__}: {root}".strip()
    paths = {key: str(entry[key]) for key in image_keys if isinstance(entry.get(key), (str, os.PathLike))}
    for key, path in paths.items():
        if path in reason or Path(path).name in reason:
            return f"{key} {path}: {reason}"
    for key, path in paths.items():
        problem = _unreadable(path)
        if problem is not None:
            return f"{key} {path}: {problem}"
    step = re.search(r"<([\w.]+) object", str(error))
    return f"preprocessing ({step.group(1).rsplit('.', 1)[-1]}): {reason}" if step else reason


class FailureTolerantDataset(Dataset):
    """A ``monai.data.Dataset`` that returns an error item instead of raising for a scan that cannot be read.

    Items are transformed on access (no caching). A scan whose transform raises, or that
    ``failures`` already names, becomes ``{id_key: session, FAILED_KEY: message}``; collate the items with
    :meth:`BatchInference.collate` so the error items travel beside the good ones.

    Args:
        data: manifest entries (dicts with image paths).
        transform: the preprocessing chain.
        failures: session -> message of scans known to be bad (e.g. from validation): not loaded.
        id_key: entry key of the session id.

    Examples:
        >>> ds = FailureTolerantDataset([{"session": "s1", "t1": "/nowhere.nii.gz"}], transform=lambda d: 1 / 0)
        >>> sorted(ds[0])
        ['inference_error', 'session']
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable[..., Any] | None = None,
        failures: Mapping[str, str] | None = None,
        id_key: str = "session",
    ) -> None:
        super().__init__(data=data, transform=transform)
        self.failures = dict(failures or {})
        self.id_key = id_key

    def _transform(self, index: int) -> Any:
        entry = self.data[index]
        session = str(entry.get(self.id_key))
        if session in self.failures:
            return {self.id_key: session, FAILED_KEY: self.failures[session]}
        try:
            return super()._transform(index)
        except Exception as error:  # noqa: BLE001 - one unreadable scan must not stop the cohort
            logger.debug(f"{session}: preprocessing failed", exc_info=True)
            return {self.id_key: session, FAILED_KEY: describe_failure(error, entry)}


class BatchInference:
    """Resumable, fault-tolerant inference over the sessions of one manifest split (module docstring).

    Args:
        entries: the split's manifest entries (``monai_ms.data.load_datalist``), in manifest order.
        records_dir: folder of the per-session completion records ``<session>.json``.
        overwrite: redo every session, complete or not.
        writers: output handlers to switch to per-session records (``LesionMaskWriter``,
            ``PredictionTableHandler`` and subclasses: anything with ``bind(batch)``).
        model_files: files whose content identifies the model (the checkpoint); a session made with
            other files is redone, as is one whose input images were replaced since.
        settings: settings that change the outputs (spacing, threshold, ...), JSON-able; a session made
            with other settings is redone.
        id_key: entry key of the session id.
        progress: show a progress bar over the scans.

    Raises:
        ValueError: a duplicate session id, or one that cannot be a file name.

    Examples:
        >>> batch = BatchInference([{"session": "s1", "t1": "a.nii.gz"}], "out/sessions")  # doctest: +SKIP
        >>> [e["session"] for e in batch.pending()]  # doctest: +SKIP
        ['s1']
    """

    def __init__(
        self,
        entries: Sequence[Mapping[str, Any]],
        records_dir: str | os.PathLike,
        overwrite: bool = False,
        writers: Sequence[Any] = (),
        model_files: Sequence[str | os.PathLike] = (),
        settings: Mapping[str, Any] | None = None,
        id_key: str = "session",
        progress: bool = True,
    ) -> None:
        if not isinstance(overwrite, bool):
            raise ValueError(f"overwrite must be True or False, got {overwrite!r}")
        self.entries = [dict(entry) for entry in entries]
        self.id_key = id_key
        self.sessions = [str(entry.get(id_key)) for entry in self.entries]
        self._by_session = dict(zip(self.sessions, self.entries))
        seen: set[str] = set()
        for session in self.sessions:
            if session in seen:
                raise ValueError(f"session {session} appears twice in the inferred split; session ids must be unique")
            if not session or session in (".", "..") or "/" in session or "\\" in session or session == "None":
                raise ValueError(f"session id {session!r} cannot name output files (empty, or with a path separator)")
            seen.add(session)
        self.records_dir = Path(records_dir)
        self.overwrite = overwrite
        self.model_files = [str(path) for path in model_files]
        self.settings = dict(settings or {})
        self.progress = progress
        self.failures: dict[str, str] = {}  # known before the run: validation's per-file problems
        self._table_writers: list[Callable[[], Path]] = []
        self._pending: list[dict[str, Any]] | None = None
        self._signature: str | None = None
        for writer in writers:
            writer.bind(self)

    # ---------------------------------------------------------------- what is done, what is left
    @property
    def signature(self) -> str:
        """Digest of the model files and settings; stored in each record."""
        if self._signature is None:
            model = {path: sha256_file(path) if os.path.isfile(path) else None for path in self.model_files}
            self._signature = sha256_json({"model": model, "settings": self.settings})[:16]
        return self._signature

    def record_path(self, session: str) -> Path:
        """The completion record of a session."""
        return self.records_dir / f"{session}.json"

    def read_record(self, session: str) -> dict[str, Any] | None:
        """A session's record, or None when it has none (or an unreadable one)."""
        try:
            record = json.loads(self.record_path(session).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _state(self, session: str) -> str:
        record = self.read_record(session)
        if record is None:
            return "missing"
        if record.get("status") != "ok":
            return "failed"
        if record.get("signature") != self.signature or record.get("inputs") != self._inputs(session):
            return "changed"
        if not all(os.path.isfile(path) for path in record.get("files", [])):
            return "incomplete"
        return "complete"

    input_keys: tuple[str, ...] = tuple(IMAGE_KEYS)  # the entry keys whose files a record depends on

    def _inputs(self, session: str) -> dict[str, list[Any] | None]:
        """The session's input files as ``[path, size, mtime_ns]``: a replaced or edited scan is redone."""
        inputs: dict[str, list[Any] | None] = {}
        for key in self.input_keys:
            value = self._by_session.get(session, {}).get(key)
            if isinstance(value, (str, os.PathLike)):
                path = os.path.abspath(value)
                try:
                    info = os.stat(path)
                except OSError:
                    inputs[key] = None
                else:
                    inputs[key] = [path, info.st_size, info.st_mtime_ns]
        return inputs

    def is_complete(self, session: str) -> bool:
        """True when the session's outputs are all there, made by the same model and settings."""
        return self._state(session) == "complete"

    def pending(self) -> list[dict[str, Any]]:
        """Entries to run (in manifest order): all with ``overwrite``, else those not complete. Logged once."""
        if self._pending is None:
            if self.overwrite:
                self._pending = list(self.entries)
                logger.info(f"batch inference: overwrite=True, running all {len(self.entries)} sessions")
            else:
                states = {session: self._state(session) for session in self.sessions}
                self._pending = [e for e, s in zip(self.entries, self.sessions) if states[s] != "complete"]
                done = len(self.entries) - len(self._pending)
                counts = {state: sum(v == state for v in states.values()) for state in ("failed", "incomplete", "changed")}
                redo = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
                logger.info(
                    f"batch inference: {len(self.entries)} sessions; skipped {done} with complete outputs "
                    f"(records in {self.records_dir}; overwrite=True redoes them); running {len(self._pending)}"
                    + (f" ({redo})" if redo else "")
                )
        return self._pending

    # ---------------------------------------------------------------- before the run
    def validate(
        self, manifest: str | os.PathLike, task: str, split: str = "testing", modalities: Sequence[str] | None = None
    ) -> bool:
        """Check the manifest before the run: stop on structural problems, turn per-file ones into failures.

        Runs :func:`monai_ms.data.validate_manifest` on ``split`` (voxel checks only when a session is left
        to run). Problems with one image file of one session (missing, unreadable, truncated, NaN, a T2
        of another head, ...) mark that session failed when it is pending: it gets an error row and is
        not loaded. Any other problem (missing keys or values, duplicate sessions, an empty split) stops
        the run as ``monai_ms.bundle.validate_cohort`` does: one line per problem and exit status 1 under
        ``python -m monai.bundle``, ``ManifestError`` from Python.

        Args:
            manifest: the manifest file.
            task: the validation task, e.g. ``"lesion_seg_inference"``.
            split: the inferred split.
            modalities: the images the model reads (its bundle's ``modalities``); a session without one of
                them is a structural problem, named per session, and the run stops before any work.

        Returns:
            True when the run can go on.

        Raises:
            ManifestError: structural problems (outside the bundle CLI).
        """
        from monai_ms.data.manifest import ManifestError, read_manifest
        from monai_ms.data.validation import validate_manifest

        pending = {str(entry.get(self.id_key)) for entry in self.pending()}
        report = validate_manifest(manifest, task=task, splits=[split], check_voxels=bool(pending), modalities=modalities)
        raw = read_manifest(manifest).get(split, [])
        structural = []
        for problem in report.problems:
            session = _file_problem_session(problem, raw, split, self.id_key)
            if session is None:
                structural.append(str(problem))
            elif session in pending:
                self.failures.setdefault(session, problem.message)
        if structural:
            message = "\n".join([*structural, report.final_line()])
            stop_or_raise(ManifestError(message), f"{message}\n\nstopped before inference: fix the manifest ({manifest}) and rerun.")
        if self.failures:
            logger.warning(
                f"{len(self.failures)} sessions have unreadable or inconsistent files and will get an error row: "
                + ", ".join(sorted(self.failures))
            )
        else:
            logger.info(f"{manifest}: {split} checked for inference ({report.final_line()})")
        return True

    def dataset(self, transform: Callable[..., Any] | None) -> FailureTolerantDataset:
        """The pending sessions as a streamed dataset that returns error items for unreadable scans."""
        return FailureTolerantDataset(self.pending(), transform, failures=self.failures, id_key=self.id_key)

    # ---------------------------------------------------------------- during the run
    def collate(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``collate_fn``: the good items collated as usual, the error items as ``[(session, message)]``
        under ``FAILED_KEY``."""
        good = [item for item in items if FAILED_KEY not in item]
        batch = dict(list_data_collate(good)) if good else {}
        batch[FAILED_KEY] = [(str(item[self.id_key]), str(item[FAILED_KEY])) for item in items if FAILED_KEY in item]
        return batch

    def iteration(self, engine: Engine, batchdata: dict[str, Any]) -> Any:
        """``iteration_update`` of the evaluator: record the error items, run the network on the rest.

        An error raised by the network or the post-processing fails the sessions of that batch (their
        message names the step) and the run goes on. When nothing is left to run, ``engine.state.batch``
        and the returned output are None, and the writers skip the iteration.
        """
        for session, message in batchdata.pop(FAILED_KEY, []):
            self.fail(session, message)
        sessions = [str(s) for s in batchdata.get(self.id_key, [])]
        if not sessions:
            engine.state.batch = None
            return None
        for session in sessions:
            # an old record must not vouch for files this run is about to replace
            self.record_path(session).unlink(missing_ok=True)
        try:
            # the evaluator's own iteration (prepare_batch, inferer, decollate, post-processing): only the
            # handling of failures is added around it
            return engine._iteration(engine, batchdata)  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001 - e.g. a scan too small for the network
            logger.debug("inference failed", exc_info=True)
            root = _root_cause(error)
            for session in sessions:
                self.fail(session, f"inference: {type(root).__name__}: {root}")
            engine.state.batch = None
            return None

    def complete(
        self,
        session: str,
        row: Mapping[str, Any],
        files: Sequence[str | os.PathLike] = (),
        tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> Path:
        """Record a session as done, after all its files are written (the record is written last).

        Args:
            session: the session id.
            row: its row of the batch table (JSON-able values).
            files: its output files (all must exist for the session to count as complete on a rerun).
            tables: other per-session rows, by table name (e.g. one row per lesion).

        Returns:
            the record's path.
        """
        record = {
            "session": session,
            "status": "ok",
            "signature": self.signature,
            "inputs": self._inputs(session),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [str(Path(path).resolve()) for path in files],
            "row": dict(row),
            "tables": {name: [dict(r) for r in rows] for name, rows in (tables or {}).items()},
        }
        return write_json(record, self.record_path(session))

    def fail(self, session: str, message: str) -> Path:
        """Record a session as failed with its message (it gets an error row and is redone on a rerun)."""
        logger.error(f"{session}: {message}")
        record = {
            "session": session,
            "status": "failed",
            "signature": self.signature,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "error": message,
        }
        return write_json(record, self.record_path(session))

    def attach(self, engine: Engine) -> None:
        """Show a progress bar over the scans (an ignite ``ProgressBar``)."""
        if self.progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=True, desc="inference").attach(engine)

    # ---------------------------------------------------------------- after the run
    def register_table_writer(self, write: Callable[[], Path]) -> None:
        """Called by a bound writer: ``write()`` assembles its batch table(s) from the records, returns the path."""
        self._table_writers.append(write)

    def records(self) -> list[dict[str, Any]]:
        """The records of the split's sessions that have one, in manifest order."""
        return [record for record in (self.read_record(s) for s in self.sessions) if record is not None]

    def table(self) -> pd.DataFrame:
        """One row per session with a record: its row, or ``session`` and ``error``; ``error`` last, and
        only when a session failed."""
        rows = [
            {self.id_key: r["session"], **{k: v for k, v in r.get("row", {}).items() if k != self.id_key}}
            if r.get("status") == "ok"
            else {self.id_key: r["session"], "error": r.get("error", "")}
            for r in self.records()
        ]
        frame = pd.DataFrame(rows)
        if "error" in frame.columns:
            frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
            counts = {k for row in rows if "error" not in row for k, v in row.items() if _is_integer(v)}
            counts -= {k for row in rows if "error" not in row for k, v in row.items() if not _is_integer(v)}
            frame = frame.astype({k: "Int64" for k in counts})  # a count stays a count beside an error row
        return frame

    def part(self, name: str) -> list[dict[str, Any]]:
        """Rows of the named per-session table of every completed session, in manifest order."""
        return [row for r in self.records() if r.get("status") == "ok" for row in r.get("tables", {}).get(name, [])]

    def add_error_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (one row per completed session) with the failed sessions' rows, in manifest order."""
        failed = [(r["session"], r.get("error", "")) for r in self.records() if r.get("status") != "ok"]
        if not failed:
            return frame
        errors = pd.DataFrame({self.id_key: [s for s, _ in failed], "error": [m for _, m in failed]})
        counts = {c: "Int64" for c in frame.columns if frame[c].dtype.kind in "iu"}
        frame = pd.concat([frame, errors], ignore_index=True).astype(counts)
        order = {session: i for i, session in enumerate(self.sessions)}
        return frame.sort_values(self.id_key, key=lambda c: c.map(order), kind="stable").reset_index(drop=True)

    def run(self, evaluator: Any) -> bool:
        """Run ``evaluator`` over the pending sessions (not at all when none is left), then :meth:`finish`.

        Args:
            evaluator: the ``SupervisedEvaluator`` whose data loader reads :meth:`dataset`.

        Returns:
            True when every session of the split has its outputs.

        Raises:
            BatchInferenceError: some sessions failed (outside the bundle CLI), see :meth:`finish`.

        Examples:
            In ``inference.json``: ``"inferring": ["$@infer#batch.run(@infer#evaluator)"]``.
        """
        if self.pending():
            evaluator.run()
        return self.finish()

    def finish(self) -> bool:
        """Write the batch tables from the records; report the failed sessions.

        Called by :meth:`run` after the evaluator's run.

        Returns:
            True when every session of the split has its outputs.

        Raises:
            BatchInferenceError: some sessions failed (outside the bundle CLI, where the message is printed
                and the process exits with status 1, without a traceback).
        """
        tables = [str(write()) for write in self._table_writers]
        states = {}
        for session in self.sessions:
            record = self.read_record(session)
            states[session] = None if record is None else record.get("error") if record.get("status") != "ok" else ""
        failed = {s: m for s, m in states.items() if m}
        not_run = [s for s, m in states.items() if m is None]
        done = len(self.sessions) - len(failed) - len(not_run)
        where = f" ({', '.join(tables)})" if tables else ""
        if not failed and not not_run:
            logger.info(f"batch inference: all {done} sessions have their outputs{where}")
            return True
        lines = [f"batch inference: {len(failed) + len(not_run)} of {len(self.sessions)} sessions have no outputs{where}:"]
        lines += [f"  {session}: {message}" for session, message in list(failed.items())[:_MAX_LISTED]]
        lines += [f"  {session}: not run (the run stopped before it)" for session in not_run[: max(0, _MAX_LISTED - len(failed))]]
        if len(failed) + len(not_run) > _MAX_LISTED:
            lines.append(f"  ... and {len(failed) + len(not_run) - _MAX_LISTED} more (see the error column of the table)")
        lines.append(
            f"the other {done} sessions have their outputs. Fix or replace the failed scans and rerun the same "
            "command: complete sessions are skipped."
        )
        stop_or_raise(BatchInferenceError("\n".join(lines)))


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _file_problem_session(problem: Any, raw: Sequence[Any], split: str, id_key: str) -> str | None:
    """The session of a validation problem about its own image files, or None (a structural problem).

    Uses the structured fields of ``monai_ms.data.validation.Problem``: a problem of kind ``file`` (a check
    of one file: missing, unreadable, NaN, wrong contrast, a label map, ...), ``derived`` (the session's files
    disagree: a T2 of another head, a mask off the T1 grid) or ``duplicate_contents`` (voxels identical to
    another session's scan, reported on both sessions) fails that session alone. One file named by two
    sessions, missing keys or values, duplicate session ids stop the run.
    """
    from monai_ms.data.validation import FILE_KINDS

    if problem.kind not in FILE_KINDS or problem.split != split or problem.index is None:
        return None
    entry = raw[problem.index] if problem.index < len(raw) else None
    if not isinstance(entry, Mapping) or not isinstance(entry.get(id_key), str):
        return None
    return entry[id_key]
