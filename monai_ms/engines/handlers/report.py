"""What every evaluation ``metrics.json`` carries beyond the point estimates, shared by the four report handlers.

:func:`finish_report` adds, to a report with ``"model"`` (or ``"summary"``) and ``"baselines"``:

- ``"ci95"`` inside the model's and each baseline's metrics: ``{metric: [low, high]}``, a 95% subject
  bootstrap interval (:mod:`monai_ms.engines.metrics.bootstrap`) on paired resamples;
- ``"uncertainty"``: how the intervals were made (``n_subjects``, ``n_sessions``, resamples, seed, method,
  resamples where a metric was undefined) and the interval of the model-minus-best-baseline difference;
- ``"beats_baselines"`` (true/false, null when undefined) and ``"baseline_comparison"``
  (:func:`~monai_ms.engines.handlers.baseline_guard.compare_with_baselines`: metric, direction, the baseline compared),
  against the trivial baselines (tier 1); with an ``imaging_features`` baseline (tier 2) also
  ``"beats_imaging_features"``;
- ``"split"`` and ``"provenance"`` (split, manifest and checkpoint SHA-256, bundle version, overrides) when
  given, e.g. from :func:`monai_ms.bundle.evaluation_provenance`.

:func:`write_sidecar` writes the provenance next to a predictions table (``predictions.provenance.json``).

:class:`ReportHandler` is the skeleton the four report handlers share: at the end of the evaluator's run it asks
the subclass for its report, table and resampling function (:meth:`ReportHandler.build`), finishes the report,
writes ``metrics.json``, the table and its sidecar atomically, then the subclass's pictures and extra files, and
logs one summary line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events

from monai_ms.engines.handlers.baseline_guard import compare_with_baselines
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES, bootstrap_metrics
from monai_ms.engines.metrics.imaging_features import IMAGING_BASELINE
from monai_ms.io import write_csv, write_json

__all__ = ["finish_report", "sidecar_path", "write_sidecar", "subjects_of", "ReportParts", "ReportHandler"]

logger = logging.getLogger(__name__)


def subjects_of(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The subject of each entry (the session itself where an entry names no subject).

    Examples:
        >>> subjects_of([{"subject": "P1", "session": "a"}, {"session": "b"}])
        ['P1', 'b']
    """
    return [str(e.get("subject") if e.get("subject") not in (None, "") else e.get("session")) for e in entries]


def finish_report(
    report: dict[str, Any],
    compute: Callable[[np.ndarray], Mapping[str, Mapping[str, Any]]],
    subjects: Sequence[str],
    metric: str,
    lower_is_better: bool,
    provenance: Mapping[str, Any] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    model_key: str = "model",
) -> dict[str, Any]:
    """Add intervals, the baseline comparison and provenance to an evaluation report (in place).

    Args:
        report: holds ``report[model_key]`` (the model's metrics) and ``report["baselines"]``.
        compute: index array -> ``{"model": metrics, <baseline name>: metrics}`` recomputed on those sessions
            with the same metric function as the point estimates.
        subjects: the subject of each evaluated session, in the order ``compute`` indexes.
        metric: the metric that decides ``beats_baselines`` (``"mae"``, ``"auc"``, ``"mean_dice"``).
        lower_is_better: its direction.
        provenance: recorded as ``report["provenance"]`` (its ``split`` also as ``report["split"]``).
        n_resamples: bootstrap resamples (0 skips the intervals).
        seed: bootstrap seed.
        model_key: ``"model"``, or ``"summary"`` for the lesion report.

    Returns:
        the report.

    Examples:
        >>> from monai_ms.engines.metrics.scores import regression_metrics
        >>> p, t, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.0]), np.array([2.0, 2.0, 2.0])
        >>> r = {"model": regression_metrics(p, t), "baselines": {"median": regression_metrics(b, t)}}
        >>> finish_report(r, lambda i: {"model": regression_metrics(p[i], t[i]), "median": regression_metrics(b[i], t[i])},
        ...               ["s1", "s2", "s3"], "mae", True, n_resamples=50)["beats_baselines"]
        True
    """
    baselines = report.setdefault("baselines", {})
    # beats_baselines is about the trivial baselines (tier 1); the imaging-feature one (tier 2) is reported apart
    trivial = {name: values for name, values in baselines.items() if name != IMAGING_BASELINE}
    comparison = compare_with_baselines(report[model_key], trivial, metric, lower_is_better)
    if IMAGING_BASELINE in baselines:
        imaging = compare_with_baselines(report[model_key], {IMAGING_BASELINE: baselines[IMAGING_BASELINE]}, metric, lower_is_better)
        report["beats_imaging_features"] = imaging["beats_baselines"]
    if provenance is not None:
        report["split"] = provenance.get("split")
        report["provenance"] = dict(provenance)
    if n_resamples > 0:
        best = comparison["baseline"]
        uncertainty = bootstrap_metrics(
            compute,
            list(subjects),
            n_resamples=n_resamples,
            seed=seed,
            difference=(metric, "model", best) if best is not None else None,
        )
        intervals = uncertainty.pop("intervals")
        report[model_key]["ci95"] = intervals.get("model", {})
        for name, values in baselines.items():
            values["ci95"] = intervals.get(name, {})
        if "difference" in uncertainty:
            comparison["difference_ci95"] = uncertainty["difference"]["interval"]
            comparison["difference"] = f"model {metric} minus {best} {metric}, same resamples"
        report["uncertainty"] = uncertainty
    report["beats_baselines"] = comparison.pop("beats_baselines")
    report["baseline_comparison"] = comparison
    return report


def sidecar_path(table: str | Path) -> Path:
    """``predictions.csv`` -> ``predictions.provenance.json`` (the sidecar of a result table)."""
    table = Path(table)
    return table.with_name(f"{table.stem}.provenance.json")


def write_sidecar(table: str | Path, provenance: Mapping[str, Any] | None, columns: Sequence[str], rows: int) -> Path:
    """Write the provenance of a result table next to it (atomically).

    Args:
        table: the CSV it describes.
        provenance: see :func:`finish_report` (None: recorded as unknown).
        columns: the table's columns.
        rows: its number of rows.

    Returns:
        the sidecar's path.
    """
    path = sidecar_path(table)
    write_json({"table": Path(table).name, "rows": int(rows), "columns": list(columns), "provenance": provenance}, path)
    return path


@dataclass
class ReportParts:
    """What a report handler's :meth:`ReportHandler.build` returns.

    Attributes:
        report: ``metrics.json`` before :func:`finish_report` (``"model"`` or ``"summary"``, ``"baselines"``, ...).
        table: one row per session or scan.
        compute: the model's and each baseline's metrics on a resample of the rows (for the intervals).
        subjects: the subject of each row (resampled as units).
        extra: what the subclass's pictures and extra files need (e.g. the fitted age bias).
    """

    report: dict[str, Any]
    table: pd.DataFrame
    compute: Callable[[np.ndarray], Mapping[str, Mapping[str, Any]]]
    subjects: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


class ReportHandler:
    """The skeleton of an evaluation report handler: collect during the run, write everything at its end.

    A subclass sets ``metric`` / ``lower_is_better`` (the comparison with the baselines), ``table_name`` and
    ``model_key``, and implements :meth:`build`, :meth:`summary` and optionally :meth:`after_write` (pictures,
    extra files). It needs ``output_dir``, ``provenance``, ``n_resamples`` and ``seed`` attributes. Combined
    with a collector (``class X(ReportHandler, PredictionCollector)``), :meth:`attach` attaches the collector too.
    """

    metric: str = "mae"
    lower_is_better: bool = True
    table_name: str = "predictions.csv"
    model_key: str = "model"
    output_dir: Path
    provenance: Mapping[str, Any] | None
    n_resamples: int
    seed: int

    def attach(self, engine: Engine) -> None:
        collector = getattr(super(), "attach", None)  # the collector's events first, as before the report
        if collector is not None:
            collector(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def build(self) -> ReportParts:
        """The report, table and resampling function of what was collected."""
        raise NotImplementedError

    def summary(self, parts: ReportParts) -> str:
        """The log line after writing (the report is finished: intervals are in it)."""
        raise NotImplementedError

    def after_write(self, parts: ReportParts) -> None:
        """Pictures and extra files, after ``metrics.json`` and the table are written."""

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Build, finish and write the report; returns ``metrics.json``'s content."""
        parts = self.build()
        finish_report(parts.report, parts.compute, parts.subjects, self.metric, self.lower_is_better, self.provenance,
                      self.n_resamples, self.seed, model_key=self.model_key)
        write_json(parts.report, self.output_dir / "metrics.json")
        write_csv(parts.table, self.output_dir / self.table_name)
        write_sidecar(self.output_dir / self.table_name, self.provenance, parts.table.columns, len(parts.table))
        self.after_write(parts)
        logging.getLogger(type(self).__module__).info(self.summary(parts))  # the subclass's logger, as before
        return parts.report
