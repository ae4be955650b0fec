"""Pure metric functions: numpy / scikit-learn in, dicts out, no ignite (MONAI's ``monai.metrics`` tier).

Scores with their baselines and calibration (``scores``), subject-bootstrap intervals (``bootstrap``), lesion-wise
segmentation metrics (``segmentation``), the brain-age gap and its bias correction (``brain_age``), class
balance and decisions (``classification``), the imaging-feature baseline (``imaging_features``).
"""

from __future__ import annotations

from monai_ms.engines.metrics.bootstrap import (
    DEFAULT_RESAMPLES,
    bootstrap_metrics,
    percentile_interval,
    resample_indices,
)
from monai_ms.engines.metrics.brain_age import (
    AgeBias,
    brain_age_gap,
    file_sha256,
    fit_age_bias,
    gap_summary,
    load_age_bias,
)
from monai_ms.engines.metrics.classification import (
    binary_labels,
    class_counts,
    class_from_probability,
    classification_baselines,
    decisions_from_logits,
    foreground_volume_ml,
    pos_weight_from_entries,
    probability_from_logit,
    sex_from_probability,
)
from monai_ms.engines.metrics.imaging_features import (
    IMAGING_BASELINE,
    TASK_FEATURES,
    TISSUE_ORDER,
    feature_table,
    fit_feature_model,
    imaging_baseline,
    session_features,
    tissue_fractions,
)
from monai_ms.engines.metrics.scores import (
    classification_metrics,
    clip_to_range,
    expected_calibration_error,
    regression_baselines,
    regression_metrics,
    reliability_bins,
    round_to_step,
)
from monai_ms.engines.metrics.segmentation import (
    label_lesions,
    lesion_detection,
    lesion_table,
    segmentation_metrics,
    summarize_segmentation,
)

__all__ = [
    "regression_metrics",
    "regression_baselines",
    "classification_metrics",
    "expected_calibration_error",
    "reliability_bins",
    "clip_to_range",
    "round_to_step",
    "DEFAULT_RESAMPLES",
    "resample_indices",
    "percentile_interval",
    "bootstrap_metrics",
    "label_lesions",
    "lesion_detection",
    "segmentation_metrics",
    "summarize_segmentation",
    "lesion_table",
    "AgeBias",
    "fit_age_bias",
    "brain_age_gap",
    "gap_summary",
    "file_sha256",
    "load_age_bias",
    "binary_labels",
    "class_counts",
    "pos_weight_from_entries",
    "probability_from_logit",
    "class_from_probability",
    "sex_from_probability",
    "decisions_from_logits",
    "foreground_volume_ml",
    "classification_baselines",
    "TISSUE_ORDER",
    "TASK_FEATURES",
    "tissue_fractions",
    "session_features",
    "feature_table",
    "fit_feature_model",
    "IMAGING_BASELINE",
    "imaging_baseline",
]
