"""Dataset-level metrics and trivial baselines for the regression and classification bundles.

Computed once over a whole split from collected predictions (not averaged per batch or per sample:
MONAI's ``RMSEMetric`` averages per-sample RMSE, which for a scalar output equals the MAE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm
from sklearn.linear_model import LinearRegression

from monai_ms.data.transforms import parse_sex

__all__ = ["regression_metrics", "regression_baselines", "classification_metrics"]


def regression_metrics(prediction: Sequence[float], target: Sequence[float], within: float | None = None) -> dict[str, float]:
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
    constant = np.ptp(pred) == 0 or np.ptp(true) == 0
    result = {
        "n": int(pred.size),
        "mae": float(skm.mean_absolute_error(true, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(true, pred))),
        "pearson_r": float("nan") if constant else float(stats.pearsonr(pred, true).statistic),
        "r2": float(skm.r2_score(true, pred)) if pred.size > 1 else float("nan"),
    }
    if within is not None:
        result[f"within_{within:g}"] = float(np.mean(np.abs(pred - true) <= within + 1e-9))
    return result


def _demographic_features(entries: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([[float(e["age"]), parse_sex(e["sex"])] for e in entries], dtype=np.float64)


def regression_baselines(
    train_entries: Sequence[Mapping[str, Any]],
    test_entries: Sequence[Mapping[str, Any]],
    target_key: str,
    within: float | None = None,
    linear_on_demographics: bool = True,
) -> dict[str, dict[str, Any]]:
    """Trivial baselines on the test split, fitted on the training split only.

    - ``training_median``: predict the median training target for everyone;
    - ``linear_age_sex``: least squares on age and sex (skipped when ``linear_on_demographics`` is
      False, e.g. for brain age, where age is the target).

    Args:
        train_entries: manifest entries of the training split (need ``target_key``, ``age``, ``sex``).
        test_entries: manifest entries of the evaluated split.
        target_key: the regression target, e.g. ``"edss"``.
        within: passed to :func:`regression_metrics`.
        linear_on_demographics: include the age + sex linear model.

    Returns:
        baseline name -> metrics dict, with a ``"predictions"`` list in test order.
    """
    y_train = np.array([float(e[target_key]) for e in train_entries])
    y_test = np.array([float(e[target_key]) for e in test_entries])
    median = np.full_like(y_test, np.median(y_train))
    baselines = {"training_median": {**regression_metrics(median, y_test, within), "predictions": median.tolist()}}
    if linear_on_demographics:
        model = LinearRegression().fit(_demographic_features(train_entries), y_train)
        linear = model.predict(_demographic_features(test_entries))
        baselines["linear_age_sex"] = {**regression_metrics(linear, y_test, within), "predictions": linear.tolist()}
    return baselines


def classification_metrics(probability: Sequence[float], target: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """AUC, accuracy, balanced accuracy, Brier score and confusion matrix of a binary classifier.

    Args:
        probability: predicted P(positive), shape ``(N,)``.
        target: true labels in {0, 1}, shape ``(N,)``.
        threshold: decision threshold on the probability.

    Returns:
        ``{"n", "auc", "accuracy", "balanced_accuracy", "brier", "confusion_matrix"}``; ``auc`` is NaN
        when only one class is present.
    """
    prob = np.asarray(probability, dtype=np.float64).ravel()
    true = np.asarray(target, dtype=np.int64).ravel()
    pred = (prob >= threshold).astype(np.int64)
    both_classes = len(np.unique(true)) == 2
    return {
        "n": int(true.size),
        "auc": float(skm.roc_auc_score(true, prob)) if both_classes else float("nan"),
        "accuracy": float(skm.accuracy_score(true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(true, pred)) if both_classes else float("nan"),
        "brier": float(skm.brier_score_loss(true, prob, pos_label=1)) if both_classes else float(np.mean((prob - true) ** 2)),
        "confusion_matrix": skm.confusion_matrix(true, pred, labels=[0, 1]).tolist(),
    }
