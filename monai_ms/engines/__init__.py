"""Training and evaluation machinery: batch preparation, metrics, handlers, normalisation."""

from __future__ import annotations

from monai_ms.engines.autocast import AutocastInferer, cpu_autocast
from monai_ms.engines.baseline_guard import BaselineGuard, compare_with_baselines, trivial_validation_baseline
from monai_ms.engines.bootstrap import bootstrap_metrics, percentile_interval, resample_indices
from monai_ms.engines.brain_age import (
    AgeBias,
    BrainAgeReportHandler,
    BrainAgeTableHandler,
    brain_age_gap,
    fit_age_bias,
    load_age_bias,
)
from monai_ms.engines.classification import (
    ClassificationReportHandler,
    class_counts,
    decisions_from_logits,
    pos_weight_from_entries,
    probability_from_logit,
    sex_from_probability,
)
from monai_ms.engines.evaluation_report import finish_report, write_sidecar
from monai_ms.engines.handlers import (
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
from monai_ms.engines.lesion_pathway import init_lesion_pathway, read_provenance, training_provenance
from monai_ms.engines.losses import LesionAuxiliaryLoss
from monai_ms.engines.metrics import classification_metrics, regression_baselines, regression_metrics
from monai_ms.engines.normalization import fit_covariate_head, fit_feature_paths, fit_histogram_head, fit_normalization
from monai_ms.engines.prepare_batch import PrepareBatchMultiInput
from monai_ms.engines.training_state import (
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
    "AutocastInferer",
    "cpu_autocast",
    "AtomicCheckpointSaver",
    "EpochSeedHandler",
    "NonFiniteLossError",
    "ResumeError",
    "TrainingCheckpoint",
    "TrainingFaultHandler",
    "WarmupEarlyStopHandler",
    "StartValidationHandler",
    "check_resume",
    "check_writable",
    "save_checkpoint",
    "AgeBias",
    "BrainAgeReportHandler",
    "BroadcastBuffersHandler",
    "SettleCacheHandler",
    "BrainAgeTableHandler",
    "ClassificationReportHandler",
    "brain_age_gap",
    "class_counts",
    "decisions_from_logits",
    "fit_age_bias",
    "load_age_bias",
    "pos_weight_from_entries",
    "probability_from_logit",
    "sex_from_probability",
    "LearningCurveHandler",
    "BaselineGuard",
    "bootstrap_metrics",
    "compare_with_baselines",
    "finish_report",
    "percentile_interval",
    "resample_indices",
    "trivial_validation_baseline",
    "write_sidecar",
    "LesionAuxiliaryLoss",
    "init_lesion_pathway",
    "read_provenance",
    "training_provenance",
    "PredictionCollector",
    "PredictionTableHandler",
    "ProgressBarHandler",
    "loss_from_output",
    "RegressionReportHandler",
    "PrepareBatchMultiInput",
    "classification_metrics",
    "fit_normalization",
    "fit_covariate_head",
    "fit_feature_paths",
    "fit_histogram_head",
    "lower_is_better",
    "negated_key_metric",
    "regression_baselines",
    "regression_metrics",
]
from monai_ms.engines.segmentation import (  # noqa: E402
    FlipTTAInferer,
    LesionMaskWriter,
    SegmentationReportHandler,
    label_lesions,
    lesion_detection,
    lesion_postprocessing,
    lesion_table,
    save_qc_figure,
    segmentation_metrics,
    summarize_segmentation,
)

__all__ += [
    "FlipTTAInferer",
    "LesionMaskWriter",
    "SegmentationReportHandler",
    "label_lesions",
    "lesion_detection",
    "lesion_postprocessing",
    "lesion_table",
    "save_qc_figure",
    "segmentation_metrics",
    "summarize_segmentation",
]
from monai_ms.engines.batch_inference import (  # noqa: E402
    FAILED_KEY,
    BatchInference,
    BatchInferenceError,
    FailureTolerantDataset,
    describe_failure,
)

__all__ += ["FAILED_KEY", "BatchInference", "BatchInferenceError", "FailureTolerantDataset", "describe_failure"]
