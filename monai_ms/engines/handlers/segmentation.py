"""Lesion segmentation evaluation report: per-scan and mean metrics in native space, written after a run.

The metrics: :mod:`monai_ms.engines.metrics.segmentation`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events

from monai_ms.engines.handlers.common import decollated_items, source_file, to_numpy
from monai_ms.engines.handlers.report import ReportHandler, ReportParts
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.metrics.segmentation import (
    CONNECTIVITY,
    DETECTION_OVERLAP,
    MIN_LESION_MM3,
    binary_mask,
    segmentation_metrics,
    summarize_segmentation,
)
from monai_ms.io import save_figure

__all__ = ["SegmentationReportHandler"]

logger = logging.getLogger(__name__)


class SegmentationReportHandler(ReportHandler):
    """Per-scan and mean segmentation metrics in each scan's native T1 space, written after a run.

    Attach to a decollated ``SupervisedEvaluator`` whose post-processing maps the binary prediction back
    onto the original T1 grid (``Activationsd`` -> ``Invertd`` -> ``AsDiscreted``). For each scan the
    reference mask is read from its file (the one the batch's ``label_key`` was loaded from), so the
    metrics compare the prediction with the user's own mask, voxel for voxel, at the T1's voxel size.
    After the run it writes ``metrics.json`` (summary, rules), ``per_scan.csv`` (+
    ``per_scan.provenance.json``) and ``volumes.png`` (predicted vs reference lesion volume).

    ``metrics.json`` also holds the trivial ``empty_mask`` baseline (an empty prediction on every scan:
    mean Dice 0 on scans with lesions), a 95% subject-bootstrap interval (``ci95``) of every float
    summary metric of the model and the baseline, ``beats_baselines`` (mean Dice against the baseline's)
    and the run's ``provenance`` (see :func:`monai_ms.engines.handlers.report.finish_report`).

    Args:
        output_dir: folder of the files.
        pred_key: output key of the binary prediction on the original T1 grid, shape ``(1, *t1_shape)``.
        label_key: batch key of the lesion mask (its source file is read).
        reference_key: batch key of the T1 (its source file gives the voxel size).
        id_key: batch key of the session id.
        min_volume_mm3, overlap, connectivity: lesion-wise rules (module docstring).
        extra: recorded in ``metrics.json`` (e.g. the threshold and spacing used).
        entries: manifest entries of the evaluated split (their ``subject`` groups the bootstrap), or
            ``None``: the batch's ``subject`` key, else each session is its own subject.
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance``), or ``None``.
        n_resamples: bootstrap resamples of the intervals (0: none).
        seed: bootstrap seed.

    Raises:
        ValueError: a prediction whose shape differs from the reference mask file's.

    Examples:
        In ``evaluate.json`` (``evaluate#handlers``)::

            {"_target_": "monai_ms.engines.SegmentationReportHandler", "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        output_dir: str | Path,
        pred_key: str = "pred",
        label_key: str = "lesion",
        reference_key: str = "t1",
        id_key: str = "session",
        min_volume_mm3: float = MIN_LESION_MM3,
        overlap: float = DETECTION_OVERLAP,
        connectivity: int = CONNECTIVITY,
        extra: Mapping[str, Any] | None = None,
        entries: Sequence[Mapping[str, Any]] | None = None,
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.reference_key, self.id_key = pred_key, label_key, reference_key, id_key
        self.rules = {"min_volume_mm3": float(min_volume_mm3), "overlap": float(overlap), "connectivity": int(connectivity)}
        self.extra = dict(extra or {})
        self.subjects = {str(e["session"]): str(e.get("subject") or e["session"]) for e in entries or ()}
        self.provenance = provenance
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.rows: list[dict[str, Any]] = []
        self.baseline_rows: list[dict[str, Any]] = []

    def _clear(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self.baseline_rows.clear()

    metric = "mean_dice"
    lower_is_better = False
    table_name = "per_scan.csv"
    model_key = "summary"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._clear)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        super().attach(engine)

    def collect(self, engine: Engine) -> None:
        import nibabel as nib

        for batch, output in decollated_items(engine):
            session = str(batch[self.id_key])
            mask_file = source_file(batch[self.label_key], self.label_key, session)
            t1_file = source_file(batch[self.reference_key], self.reference_key, session)
            truth = np.asanyarray(nib.load(mask_file).dataobj)
            pred = binary_mask(to_numpy(output[self.pred_key]), "prediction")
            if pred.shape != truth.shape[:3]:
                raise ValueError(
                    f"session {session}: prediction mapped back to the T1 grid has shape {pred.shape}, "
                    f"but the lesion mask {mask_file} has shape {truth.shape}; the mask must be on the T1 grid"
                )
            spacing = nib.load(t1_file).header.get_zooms()[:3]
            subject = self.subjects.get(session) or str(batch.get("subject") or session)
            truth = truth.reshape(pred.shape)
            row = {"session": session, "subject": subject, **segmentation_metrics(pred, truth, spacing, **self.rules)}
            self.rows.append(row)
            empty = np.zeros_like(pred)
            self.baseline_rows.append({"session": session, **segmentation_metrics(empty, truth, spacing, **self.rules)})

    def build(self) -> ReportParts:
        frame = pd.DataFrame(self.rows)
        summary = summarize_segmentation(self.rows)
        baselines = {"empty_mask": summarize_segmentation(self.baseline_rows)}
        report: dict[str, Any] = {"space": "native T1 grid of each scan", **self.extra, "rules": self.rules,
                                  "summary": summary, "baselines": baselines}
        rows, empty = self.rows, self.baseline_rows

        def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
            return {
                "model": summarize_segmentation([rows[i] for i in index]),
                "empty_mask": summarize_segmentation([empty[i] for i in index]),
            }

        return ReportParts(report, frame, compute, [row["subject"] for row in rows])

    def after_write(self, parts: ReportParts) -> None:
        self._plot(parts.table, parts.report["summary"])

    def summary(self, parts: ReportParts) -> str:
        summary = parts.report["summary"]
        interval = summary.get("ci95", {}).get("mean_dice")
        ci = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        return (
            f"evaluated {summary['n_scans']} scans: mean Dice {summary['mean_dice']:.3f}{ci}, lesion TPR "
            f"{summary['lesion_tpr']:.3f}, FDR {summary['lesion_fdr']:.3f}, F1 {summary['lesion_f1']:.3f}; "
            f"HD95 undefined on {summary['n_scans'] - summary['n_scans_hd95_defined']} scans; written to {self.output_dir}"
        )

    def _plot(self, frame: pd.DataFrame, summary: Mapping[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        high = float(max(frame["volume_true_ml"].max(), frame["volume_pred_ml"].max(), 1e-3))
        ax.plot([0, high], [0, high], color="grey", linestyle="--", linewidth=1, label="identity")
        ax.scatter(frame["volume_true_ml"], frame["volume_pred_ml"], s=18, alpha=0.8, label="scans")
        ax.set(
            xlabel="reference lesion volume (mL)",
            ylabel="predicted lesion volume (mL)",
            title=f"mean Dice {summary['mean_dice']:.2f}, lesion F1 {summary['lesion_f1']:.2f}, n {summary['n_scans']}",
        )
        ax.legend(loc="upper left")
        save_figure(fig, self.output_dir / "volumes.png")
        plt.close(fig)
