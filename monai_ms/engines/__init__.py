"""Training, evaluation and inference machinery, in MONAI's tiers.

- :mod:`monai_ms.engines.metrics`: pure metric functions (numpy in, dicts out; no ignite);
- :mod:`monai_ms.engines.handlers`: ignite handlers over them (learning curves, evaluation reports, guards);
- :mod:`monai_ms.engines.inference`: inferers, post-processing, batch inference, writers, saliency;
- :mod:`monai_ms.engines.training`: checkpoint state, fitted starts, losses, batch preparation.

The names below are the public API the bundle configs use (``monai_ms.engines.<name>``).
"""

from __future__ import annotations

from monai_ms.engines.handlers.baseline_guard import BaselineGuard, compare_with_baselines, trivial_validation_baseline
from monai_ms.engines.handlers.brain_age import BrainAgeReportHandler, BrainAgeTableHandler
from monai_ms.engines.handlers.classification import ClassificationReportHandler
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
from monai_ms.engines.handlers.report import finish_report, write_sidecar
from monai_ms.engines.handlers.segmentation import SegmentationReportHandler
from monai_ms.engines.inference.autocast import AutocastInferer, cpu_autocast
from monai_ms.engines.inference.batch import (
    FAILED_KEY,
    BatchInference,
    BatchInferenceError,
    FailureTolerantDataset,
    describe_failure,
)
from monai_ms.engines.inference.segmentation import (
    FlipTTAInferer,
    LesionMaskWriter,
    lesion_postprocessing,
    save_qc_figure,
)
from monai_ms.engines.metrics.bootstrap import bootstrap_metrics, percentile_interval, resample_indices
from monai_ms.engines.metrics.brain_age import AgeBias, brain_age_gap, fit_age_bias, load_age_bias
from monai_ms.engines.metrics.classification import (
    class_counts,
    decisions_from_logits,
    pos_weight_from_entries,
    probability_from_logit,
    sex_from_probability,
)
from monai_ms.engines.metrics.scores import classification_metrics, regression_baselines, regression_metrics
from monai_ms.engines.metrics.segmentation import (
    label_lesions,
    lesion_detection,
    lesion_table,
    segmentation_metrics,
    summarize_segmentation,
)
from monai_ms.engines.training.lesion_pathway import init_lesion_pathway, read_provenance, training_provenance
from monai_ms.engines.training.losses import LesionAuxiliaryLoss
from monai_ms.engines.training.normalization import (
    fit_covariate_head,
    fit_feature_paths,
    fit_histogram_head,
    fit_normalization,
)
from monai_ms.engines.training.prepare_batch import PrepareBatchMultiInput
from monai_ms.engines.training.state import (
    AtomicCheckpointSaver,
    EpochSeedHandler,
    NonFiniteLossError,
    ResumeError,
    StartValidationHandler,
    TrainingCheckpoint,
    TrainingFaultHandler,
    WarmupEarlyStopHandler,
    check_resume,
    check_writable,
    save_checkpoint,
)

__all__ = [
    "AgeBias",
    "bootstrap_metrics",
    "brain_age_gap",
    "class_counts",
    "classification_metrics",
    "decisions_from_logits",
    "fit_age_bias",
    "label_lesions",
    "lesion_detection",
    "lesion_table",
    "load_age_bias",
    "percentile_interval",
    "pos_weight_from_entries",
    "probability_from_logit",
    "regression_baselines",
    "regression_metrics",
    "resample_indices",
    "segmentation_metrics",
    "sex_from_probability",
    "summarize_segmentation",
    "BaselineGuard",
    "BrainAgeReportHandler",
    "BrainAgeTableHandler",
    "BroadcastBuffersHandler",
    "ClassificationReportHandler",
    "compare_with_baselines",
    "finish_report",
    "LearningCurveHandler",
    "loss_from_output",
    "lower_is_better",
    "negated_key_metric",
    "PredictionCollector",
    "PredictionTableHandler",
    "ProgressBarHandler",
    "RegressionReportHandler",
    "SegmentationReportHandler",
    "SettleCacheHandler",
    "trivial_validation_baseline",
    "write_sidecar",
    "AutocastInferer",
    "BatchInference",
    "BatchInferenceError",
    "cpu_autocast",
    "describe_failure",
    "FAILED_KEY",
    "FailureTolerantDataset",
    "FlipTTAInferer",
    "lesion_postprocessing",
    "LesionMaskWriter",
    "save_qc_figure",
    "AtomicCheckpointSaver",
    "check_resume",
    "check_writable",
    "EpochSeedHandler",
    "fit_covariate_head",
    "fit_feature_paths",
    "fit_histogram_head",
    "fit_normalization",
    "init_lesion_pathway",
    "LesionAuxiliaryLoss",
    "NonFiniteLossError",
    "PrepareBatchMultiInput",
    "read_provenance",
    "ResumeError",
    "save_checkpoint",
    "StartValidationHandler",
    "training_provenance",
    "TrainingCheckpoint",
    "TrainingFaultHandler",
    "WarmupEarlyStopHandler",
]
