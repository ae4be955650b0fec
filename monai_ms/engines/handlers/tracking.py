"""What MONAI's ``--tracking mlflow`` leaves out: the bundle's settings, final metrics and pictures.

``python -m monai.bundle run training ... --tracking mlflow`` appends a ``monai.handlers.MLFlowHandler``
to ``train#handlers``, ``validate#handlers`` and the top-level ``handlers`` of a bundle. Those log the
iteration loss, the validator's metrics per epoch and the executed config. :class:`MLflowRunLogger`,
placed in the same handler lists, adds to *that* run (it finds the ``MLFlowHandler`` attached to its
engine, so it never opens a run of its own):

- parameters: the bundle settings it is given (``epochs``, ``learning_rate``, ``spacing``, ...);
- metrics: each row of ``training_log.csv`` (mean training loss and learning rate per epoch) and the
  scalar metrics of an evaluation ``metrics.json`` (``test_mae``, ``test_dice``, ...);
- artefacts: the PNGs and tables the run wrote (learning curve, scatter, ROC, volumes).

Without ``--tracking`` no ``MLFlowHandler`` is attached and the logger does nothing (MLflow is not
even imported), so the configs run unchanged where MLflow is not installed.

Examples:
    In ``train.json``, after the learning-curve handler in ``train#handlers``::

        {"_target_": "monai_ms.engines.handlers.tracking.MLflowRunLogger",
         "params": {"epochs": "@epochs", "learning_rate": "@learning_rate"},
         "history_csv": "$@output_dir + '/training_log.csv'",
         "artifacts": ["$@output_dir + '/learning_curve.png'"]}
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["MLflowRunLogger", "attached_mlflow_handlers", "flatten_metrics"]

logger = logging.getLogger(__name__)


def attached_mlflow_handlers(engine: Engine) -> list[Any]:
    """The ``monai.handlers.MLFlowHandler`` instances attached to ``engine`` (by their COMPLETED callback).

    Ignite keeps no public list of handlers; this reads ``engine._event_handlers`` (stable since
    ignite 0.4). MLflow is imported only when MONAI's handler module is already loaded.
    """
    import sys

    module = sys.modules.get("monai.handlers.mlflow_handler")
    if module is None:
        return []
    found = []
    for callback, *_ in engine._event_handlers.get(Events.COMPLETED, []):
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, module.MLFlowHandler) and owner not in found:
            found.append(owner)
    return found


def flatten_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The model's and the baselines' finite scalar metrics of a ``metrics.json`` report, as MLflow metrics.

    Reads the ``model`` (or ``summary``) section and each ``baselines`` entry; a ``ci95`` mapping of
    ``[low, high]`` pairs becomes ``<metric>_ci95_low`` / ``_ci95_high``. Other sections (settings,
    calibration bins, bootstrap settings), lists, strings, booleans and None are left out.

    Examples:
        >>> flatten_metrics({"model": {"mae": 1.2, "ci95": {"mae": [1.0, 1.5]}}, "baselines": {"median": {"mae": 1.6}}}, "test_")
        {'test_mae': 1.2, 'test_mae_ci95_low': 1.0, 'test_mae_ci95_high': 1.5, 'test_baseline_median_mae': 1.6}
    """
    sections: list[tuple[str, Any]] = [(prefix, report.get("model") or report.get("summary") or {})]
    baselines = report.get("baselines")
    if isinstance(baselines, Mapping):
        sections += [(f"{prefix}baseline_{name}_", values) for name, values in baselines.items()]
    out: dict[str, float] = {}
    for name, values in sections:
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if _finite(value):
                out[f"{name}{key}"] = float(value)
        intervals = values.get("ci95")
        if isinstance(intervals, Mapping):
            for key, pair in intervals.items():
                if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_finite(v) for v in pair):
                    out[f"{name}{key}_ci95_low"], out[f"{name}{key}_ci95_high"] = float(pair[0]), float(pair[1])
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MLflowRunLogger:
    """Log a bundle's settings, per-epoch history, final metrics and pictures into the ``--tracking mlflow`` run.

    Attach it to the same engine as MONAI's ``MLFlowHandler`` (any position in the handler list before
    it: ``--tracking`` appends its handler at the end). Everything is logged at ``COMPLETED``, after
    the report handlers listed before it wrote their files.

    Args:
        params: bundle settings to record as MLflow parameters (values are written as JSON text).
        history_csv: a ``training_log.csv`` (:class:`~monai_ms.engines.LearningCurveHandler`); each
            numeric column is logged per epoch (``step`` = epoch) with the prefix ``epoch_``.
        metrics_file: an evaluation ``metrics.json``; its scalars are logged (see :func:`flatten_metrics`).
        metric_prefix: prefix of the ``metrics_file`` metrics, e.g. ``"test_"``.
        artifacts: files or glob patterns to upload; patterns matching nothing are skipped with a log line.

    Examples:
        >>> logger = MLflowRunLogger(params={"epochs": 2}, artifacts=["eval/*.png"])  # doctest: +SKIP
        >>> logger.attach(trainer)  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        history_csv: str | os.PathLike | None = None,
        metrics_file: str | os.PathLike | None = None,
        metric_prefix: str = "",
        artifacts: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.params = dict(params or {})
        self.history_csv = Path(history_csv) if history_csv is not None else None
        self.metrics_file = Path(metrics_file) if metrics_file is not None else None
        self.metric_prefix = metric_prefix
        self.artifacts = [str(a) for a in artifacts]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        """Make the iteration loss of ``--tracking mlflow`` a number for a trainer that does not decollate.

        MONAI's default tracking settings read the loss with ``from_engine(["loss"], first=True)``,
        which returns a 1-tuple for a dict output (``decollate=False``, as these bundles train), and
        ``MLFlowHandler`` then fails on ``float(tuple)``. The tuple is unwrapped; other outputs pass.
        """
        for handler in attached_mlflow_handlers(engine):
            if not getattr(handler.output_transform, "_monai_ms_unwrapped", False):
                handler.output_transform = _unwrap_single(handler.output_transform)

    def completed(self, engine: Engine) -> None:
        """Log into the run of every ``MLFlowHandler`` attached to ``engine`` (none: do nothing)."""
        for handler in attached_mlflow_handlers(engine):
            if handler.cur_run is None:
                continue
            self.log_to(handler.client, handler.cur_run.info.run_id)

    def files(self) -> list[Path]:
        """The artefact files that exist now, in the order given."""
        found: list[Path] = []
        for pattern in self.artifacts:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            existing = [Path(m) for m in matches if Path(m).is_file()]
            if not existing:
                logger.info(f"MLflow artefact {pattern}: no such file, not logged")
            found += [p for p in existing if p not in found]
        return found

    def log_to(self, client: Any, run_id: str) -> None:
        """Log params, history, metrics and artefacts to ``run_id`` through an ``mlflow.MlflowClient``."""
        from mlflow.entities import Metric, Param

        logged = client.get_run(run_id).data.params
        params = [Param(k, _param_text(v)[:6000]) for k, v in self.params.items() if k not in logged]
        metrics: list[Any] = []
        timestamp = _now_ms()
        if self.history_csv is not None and self.history_csv.is_file():
            with self.history_csv.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    step = int(float(row.get("epoch") or 0))
                    for key, text in row.items():
                        value = _number(text)
                        if key != "epoch" and value is not None:
                            metrics.append(Metric(f"epoch_{key}", value, timestamp, step))
        if self.metrics_file is not None and self.metrics_file.is_file():
            report = json.loads(self.metrics_file.read_text())
            for key, value in flatten_metrics(report, self.metric_prefix).items():
                metrics.append(Metric(key, value, timestamp, 0))
        for start in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, metrics=[], params=params[start : start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000], params=[])
        for path in self.files():
            client.log_artifact(run_id, str(path))


def _unwrap_single(transform: Any) -> Any:
    def unwrapped(output: Any) -> Any:
        value = transform(output)
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    unwrapped._monai_ms_unwrapped = True  # type: ignore[attr-defined]
    return unwrapped


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
