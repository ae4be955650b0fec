"""Dataset-level metrics and trivial baselines for the regression and classification bundles.

Computed once over a whole split from collected predictions (not averaged per batch or per sample:
MONAI's ``RMSEMetric`` averages per-sample RMSE, which for a scalar output equals the MAE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from scipy import stats
from sklearn.linear_model import LinearRegression

from monai_ms.data.fields import parse_sex

if TYPE_CHECKING:
    import torch

__all__ = [
    "regression_metrics",
    "regression_baselines",
    "classification_metrics",
    "expected_calibration_error",
    "reliability_bins",
    "clip_to_range",
    "round_to_step",
]

ECE_BINS = 10


def regression_metrics(
    prediction: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, within: float | None = None
) -> dict[str, float]:
    """MAE, dataset-level RMSE, Pearson r and R^2 (and the share of errors <= ``within``).

    Args:
        prediction: predicted values, shape ``(N,)``.
        target: true values, shape ``(N,)``.
        within: if given, also ``within_<value>``: the fraction of samples with ``|error| <= within``.

    Returns:
        ``{"n", "mae", "rmse", "pearson_r", "r2"[, "within_1.0"]}``; ``pearson_r`` is NaN when either
        side is constant (undefined, not zero).

    Examples:
        >>> regression_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 3.0])["mae"]
        0.6666666666666666
    """
    pred = np.asarray(prediction, dtype=np.float64).ravel()
    true = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"prediction and target must be non-empty and of equal length, got {pred.size} and {true.size}")
    # plain numpy (the same definitions as sklearn's mean_absolute_error / r2_score and scipy's pearsonr):
    # the bootstrap recomputes these a thousand times per report
    error = pred - true
    constant = np.ptp(pred) == 0 or np.ptp(true) == 0
    total = float(np.sum((true - true.mean()) ** 2))
    if pred.size < 2:
        r2 = float("nan")
    elif total == 0:
        r2 = 1.0 if np.all(error == 0) else 0.0  # sklearn's convention for a constant target
    else:
        r2 = 1.0 - float(np.sum(error**2)) / total
    result = {
        "n": int(pred.size),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "pearson_r": float("nan") if constant else float(np.clip(np.corrcoef(pred, true)[0, 1], -1.0, 1.0)),
        "r2": r2,
    }
    if within is not None:
        result[f"within_{within:g}"] = float(np.mean(np.abs(error) <= within + 1e-9))
    return result


def _demographic_features(entries: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([[float(e["age"]), parse_sex(e["sex"])] for e in entries], dtype=np.float64)


def regression_baselines(
    train_entries: Sequence[Mapping[str, Any]],
    test_entries: Sequence[Mapping[str, Any]],
    target_key: str,
    within: float | None = None,
    linear_on_demographics: bool = True,
    imaging_task: str | None = None,
    bias_correction: bool = False,
) -> dict[str, dict[str, Any]]:
    """Baselines on the test split, fitted on the training split only.

    - ``training_median``: predict the median training target for everyone;
    - ``linear_age_sex``: least squares on age and sex (skipped when ``linear_on_demographics`` is
      False, e.g. for brain age, where age is the target);
    - ``imaging_features`` (with ``imaging_task``): a ridge model on measured imaging features
      (brain volume, tissue fractions, lesion volume and count; see
      :mod:`monai_ms.engines.metrics.imaging_features`), the tier-2 baseline; it reads every image once.

    Args:
        train_entries: manifest entries of the training split (need ``target_key``, ``age``, ``sex``).
        test_entries: manifest entries of the evaluated split.
        target_key: the regression target, e.g. ``"edss"``.
        within: passed to :func:`regression_metrics`.
        linear_on_demographics: include the age + sex linear model.
        imaging_task: ``"edss"`` or ``"brain_age"`` to add the imaging-feature baseline, or None.
        bias_correction: measure the imaging features on N4-corrected images (the bundle's ``bias_correction``).

    Returns:
        baseline name -> metrics dict, with a ``"predictions"`` list in test order (and ``"features"``
        for the imaging-feature baseline).
    """
    y_train = np.array([float(e[target_key]) for e in train_entries])
    y_test = np.array([float(e[target_key]) for e in test_entries])
    median = np.full_like(y_test, np.median(y_train))
    baselines = {"training_median": {**regression_metrics(median, y_test, within), "predictions": median.tolist()}}
    if linear_on_demographics:
        model = LinearRegression().fit(_demographic_features(train_entries), y_train)
        linear = model.predict(_demographic_features(test_entries))
        baselines["linear_age_sex"] = {**regression_metrics(linear, y_test, within), "predictions": linear.tolist()}
    if imaging_task is not None:
        from monai_ms.engines.metrics.imaging_features import IMAGING_BASELINE, imaging_baseline

        fitted = imaging_baseline(train_entries, test_entries, target_key, imaging_task, bias_correction)
        if fitted is not None:
            metrics = regression_metrics(fitted["predictions"], y_test, within)
            baselines[IMAGING_BASELINE] = {**metrics, "predictions": fitted["predictions"], "features": fitted["features"]}
    return baselines


def classification_metrics(
    probability: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """AUC, accuracy, balanced accuracy, Brier score and confusion matrix of a binary classifier.

    Args:
        probability: predicted P(positive), shape ``(N,)``.
        target: true labels in {0, 1}, shape ``(N,)``.
        threshold: decision threshold on the probability.

    Returns:
        ``{"n", "auc", "accuracy", "balanced_accuracy", "brier", "ece", "confusion_matrix"}``; ``auc`` is NaN
        when only one class is present; ``ece`` is the expected calibration error of P(positive) in
        ``ECE_BINS`` equal-width bins (:func:`expected_calibration_error`).
    """
    prob = np.asarray(probability, dtype=np.float64).ravel()
    true = np.asarray(target, dtype=np.int64).ravel()
    if prob.shape != true.shape or prob.size == 0:
        raise ValueError(f"probability and target must be non-empty and of equal length, got {prob.size} and {true.size}")
    pred = (prob >= threshold).astype(np.int64)
    # plain numpy (the same definitions as sklearn's, which validates its input on every call): the
    # bootstrap recomputes these a thousand times per report
    matrix = np.array([[np.sum((true == t) & (pred == p)) for p in (0, 1)] for t in (0, 1)], dtype=np.int64)
    positives, negatives = int(np.sum(true == 1)), int(np.sum(true == 0))
    both_classes = positives > 0 and negatives > 0
    auc = balanced = float("nan")
    if both_classes:
        # Mann-Whitney U from average ranks (ties count one half): equals roc_auc_score
        ranks = stats.rankdata(prob)
        auc = float((ranks[true == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
        balanced = float((matrix[1, 1] / positives + matrix[0, 0] / negatives) / 2.0)
    return {
        "n": int(true.size),
        "auc": auc,
        "accuracy": float(np.mean(pred == true)),
        "balanced_accuracy": balanced,
        "brier": float(np.mean((prob - true) ** 2)),
        "ece": expected_calibration_error(prob, true),
        "confusion_matrix": matrix.tolist(),
    }


def _calibration_tensors(probability: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> tuple[Any, Any]:
    import torch

    # copies (np.array): torch.from_numpy refuses, with a warning, read-only views such as a pandas column's
    prob = np.array(probability, dtype=np.float64).ravel()
    true = np.array(target, dtype=np.float64).ravel()
    if prob.shape != true.shape or prob.size == 0:
        raise ValueError(f"probability and target must be non-empty and of equal length, got {prob.size} and {true.size}")
    # MONAI's calibration metrics take (batch, channel, spatial...): one batch, the positive class, N samples
    return torch.from_numpy(prob)[None, None], torch.from_numpy(true)[None, None]


def expected_calibration_error(
    probability: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of P(positive): ``sum_b (n_b / N) |mean p_b - positive fraction_b|``.

    Computed with MONAI's ``monai.metrics.CalibrationErrorMetric`` (``calibration_reduction="expected"``)
    on equal-width probability bins; empty bins do not count.

    Args:
        probability: predicted P(positive), shape ``(N,)``.
        target: true labels in {0, 1}, shape ``(N,)``.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        the ECE in [0, 1].

    Examples:
        >>> round(expected_calibration_error([0.1, 0.2, 0.8, 0.9, 0.6, 0.4], [0, 1, 1, 1, 0, 0]), 4)
        0.3667
    """
    from monai.metrics import CalibrationErrorMetric

    prob, true = _calibration_tensors(probability, target)
    metric = CalibrationErrorMetric(num_bins=n_bins, include_background=True, calibration_reduction="expected")
    metric(y_pred=prob, y=true)
    aggregate = cast("torch.Tensor", metric.aggregate())  # one tensor for calibration_reduction="expected"
    return float(aggregate.item())


def reliability_bins(
    probability: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, n_bins: int = ECE_BINS
) -> dict[str, list[float]]:
    """Per-bin mean predicted probability, observed positive fraction and count (a reliability diagram's points).

    Uses MONAI's ``monai.metrics.calibration.calibration_binning`` (the binning of
    :func:`expected_calibration_error`).

    Returns:
        ``{"bin_low", "bin_high", "mean_probability", "positive_fraction", "count"}``, each a list of
        ``n_bins`` values (NaN means where a bin is empty).

    Examples:
        >>> reliability_bins([0.1, 0.9], [0, 1], n_bins=2)["positive_fraction"]
        [0.0, 1.0]
    """
    from monai.metrics.calibration import calibration_binning

    prob, true = _calibration_tensors(probability, target)
    mean_p, fraction, count = calibration_binning(prob, true, num_bins=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_low": edges[:-1].tolist(),
        "bin_high": edges[1:].tolist(),
        "mean_probability": mean_p.flatten().tolist(),
        "positive_fraction": fraction.flatten().tolist(),
        "count": count.flatten().tolist(),
    }


def clip_to_range(values: Sequence[float] | np.ndarray, low: float, high: float) -> np.ndarray:
    """Predictions limited to the target's declared range (EDSS: [0, 10]).

    Examples:
        >>> clip_to_range([-0.4, 3.2, 11.0], 0.0, 10.0).tolist()
        [0.0, 3.2, 10.0]
    """
    if not low < high:
        raise ValueError(f"range must have low < high, got [{low}, {high}]")
    return np.clip(np.asarray(values, dtype=np.float64), low, high)


def round_to_step(values: Sequence[float] | np.ndarray, step: float) -> np.ndarray:
    """Values rounded to the nearest multiple of ``step`` (EDSS: 0.5), halves rounded up.

    Examples:
        >>> round_to_step([2.24, 2.25, 2.76, 0.0], 0.5).tolist()
        [2.0, 2.5, 3.0, 0.0]
    """
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    return np.floor(np.asarray(values, dtype=np.float64) / step + 0.5) * step
