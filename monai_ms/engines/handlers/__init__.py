"""Ignite event handlers, thin wrappers over :mod:`monai_ms.engines.metrics` (MONAI's ``monai.handlers`` tier).

Learning curves, progress, prediction collection and tables (``common``), the evaluation reports
(``report``: the shared ending; ``brain_age``, ``classification``, ``segmentation``), the baseline guard, tracking.
"""

from __future__ import annotations

from monai_ms.engines.handlers.baseline_guard import (
    TRIVIAL_BASELINES,
    BaselineGuard,
    compare_with_baselines,
    is_better,
    trivial_validation_baseline,
)
from monai_ms.engines.handlers.brain_age import (
    BrainAgeReportHandler,
    BrainAgeTableHandler,
)
from monai_ms.engines.handlers.classification import (
    ClassificationReportHandler,
)
from monai_ms.engines.handlers.common import (
    BroadcastBuffersHandler,
    LearningCurveHandler,
    PredictionCollector,
    PredictionTableHandler,
    ProgressBarHandler,
    RegressionReportHandler,
    SettleCacheHandler,
    loss_from_output,
    lower_is_better,
    negated_key_metric,
)
from monai_ms.engines.handlers.report import (
    finish_report,
    sidecar_path,
    subjects_of,
    write_sidecar,
)
from monai_ms.engines.handlers.segmentation import (
    SegmentationReportHandler,
)
from monai_ms.engines.handlers.tracking import (
    MLflowRunLogger,
    attached_mlflow_handlers,
    flatten_metrics,
)

__all__ = [
    "lower_is_better",
    "negated_key_metric",
    "PredictionCollector",
    "ProgressBarHandler",
    "loss_from_output",
    "LearningCurveHandler",
    "RegressionReportHandler",
    "PredictionTableHandler",
    "BroadcastBuffersHandler",
    "SettleCacheHandler",
    "finish_report",
    "sidecar_path",
    "write_sidecar",
    "subjects_of",
    "TRIVIAL_BASELINES",
    "is_better",
    "compare_with_baselines",
    "trivial_validation_baseline",
    "BaselineGuard",
    "BrainAgeReportHandler",
    "BrainAgeTableHandler",
    "ClassificationReportHandler",
    "SegmentationReportHandler",
    "MLflowRunLogger",
    "attached_mlflow_handlers",
    "flatten_metrics",
]
