"""Binary classification (sex) around ``BrainClassifier3D``: class balance, decisions, baselines (pure functions).

The network returns one logit; the loss is ``BCEWithLogitsLoss`` with ``pos_weight`` from
:func:`pos_weight_from_entries`, so each class of the training split weighs the same in the loss. The
sigmoid is applied only here, in post-processing (:func:`probability_from_logit`).

A consequence worth stating: with both classes weighted equally the network estimates P(positive) for
a population with equal class priors. A 0.5 threshold then targets balanced accuracy; to read the
probability for a population with prevalence ``pi``, multiply its odds by ``pi / (1 - pi)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monai_ms.data.fields import SEX_CLASSES, parse_sex
from monai_ms.engines.metrics.scores import classification_metrics

__all__ = [
    "binary_labels",
    "class_counts",
    "pos_weight_from_entries",
    "probability_from_logit",
    "class_from_probability",
    "sex_from_probability",
    "decisions_from_logits",
    "foreground_volume_ml",
    "classification_baselines",
]


logger = logging.getLogger(__name__)


def _binary_label(entry: Mapping[str, Any], label_key: str) -> float:
    """One entry's label as 0.0/1.0; ``sex`` is encoded 1 = male."""
    where = f"session {entry.get('session', '?')}"
    if label_key not in entry or entry[label_key] is None:
        raise ValueError(f"{where}: no {label_key!r} label")
    value = entry[label_key]
    if label_key == "sex":
        try:
            return parse_sex(value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number not in (0.0, 1.0):
        raise ValueError(f"{where}: {label_key} must be 0 or 1, got {value!r}")
    return number


def binary_labels(entries: Sequence[Mapping[str, Any]], label_key: str = "sex") -> np.ndarray:
    """Labels of manifest entries as a 0/1 array (``sex``: 1 = male, 0 = female).

    Args:
        entries: manifest entries.
        label_key: ``"sex"`` (F/M/female/male) or any key holding 0/1.

    Returns:
        float array of shape ``(N,)``.

    Raises:
        ValueError: an entry lacks the label or has another value; the message names the session.

    Examples:
        >>> binary_labels([{"session": "a", "sex": "F"}, {"session": "b", "sex": "male"}]).tolist()
        [0.0, 1.0]
    """
    return np.array([_binary_label(entry, label_key) for entry in entries], dtype=np.float64)


def class_counts(entries: Sequence[Mapping[str, Any]], label_key: str = "sex") -> dict[int, int]:
    """Number of entries per class, ``{0: n_negative, 1: n_positive}``.

    Examples:
        >>> class_counts([{"sex": "F"}, {"sex": "F"}, {"sex": "M"}])
        {0: 2, 1: 1}
    """
    labels = binary_labels(entries, label_key)
    return {0: int(np.sum(labels == 0)), 1: int(np.sum(labels == 1))}


def pos_weight_from_entries(
    entries: Sequence[Mapping[str, Any]],
    label_key: str = "sex",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``pos_weight`` for ``BCEWithLogitsLoss`` that gives both classes of the training split equal weight.

    ``pos_weight = n_negative / n_positive``: the positive sessions' summed loss then counts as much as the
    negative sessions'. Computed from the whole training split (before any DDP partition), so every
    process uses the same value.

    Args:
        entries: manifest entries of the training split.
        label_key: the label key (``"sex"``: positive = male).
        device: device of the returned tensor (the loss's device).

    Returns:
        tensor of shape ``(1,)``.

    Raises:
        ValueError: a class has no entries (nothing to learn), or a label is invalid.

    Examples:
        >>> pos_weight_from_entries([{"sex": "F"}, {"sex": "F"}, {"sex": "F"}, {"sex": "M"}])
        tensor([3.])
    """
    counts = class_counts(entries, label_key)
    if min(counts.values()) == 0:
        raise ValueError(
            f"the training split needs both classes of {label_key!r} to train a classifier, "
            f"got {counts[0]} negative (0) and {counts[1]} positive (1) sessions"
        )
    weight = counts[0] / counts[1]
    logger.info(
        f"training split class balance for {label_key!r}: {counts[0]} negative, {counts[1]} positive; "
        f"BCEWithLogitsLoss pos_weight = {weight:.3f} (both classes weigh the same)"
    )
    return torch.tensor([weight], dtype=torch.float32, device=device)


def probability_from_logit(logit: np.ndarray | Sequence[float]) -> np.ndarray:
    """Sigmoid of logits (numerically stable), the post-processing of ``BrainClassifier3D``.

    Examples:
        >>> probability_from_logit([0.0, 100.0]).tolist()
        [0.5, 1.0]
    """
    return expit(np.asarray(logit, dtype=np.float64))


def class_from_probability(
    probability: np.ndarray | Sequence[float], threshold: float = 0.5, class_names: Sequence[str] = ("0", "1")
) -> np.ndarray:
    """Class names from P(positive): ``class_names[1]`` where ``probability >= threshold``.

    Examples:
        >>> class_from_probability([0.2, 0.5, 0.9], class_names=("F", "M")).tolist()
        ['F', 'M', 'M']
    """
    names = np.asarray(list(class_names), dtype=object)
    return names[(np.asarray(probability, dtype=np.float64) >= threshold).astype(int)]


def sex_from_probability(probability: np.ndarray | Sequence[float]) -> np.ndarray:
    """``"M"`` where P(male) >= 0.5, else ``"F"`` (the ``sex_pred`` column of the sex bundle's inference)."""
    return class_from_probability(probability, 0.5, SEX_CLASSES)


def decisions_from_logits(output: Any, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``output_transform`` for ignite's ``Accuracy`` on a one-logit classifier: ``(logit > threshold, label)``.

    Args:
        output: an evaluator's output (batched dict, or a decollated list of dicts) with ``pred`` and ``label``.
        threshold: decision threshold on the logit (0 = probability 0.5).

    Returns:
        integer decisions and labels, each of shape ``(B, 1)``.
    """
    from monai.handlers import from_engine

    pred, label = from_engine(["pred", "label"])(output)
    if isinstance(pred, list):
        pred, label = torch.stack(pred), torch.stack(label)
    return (pred > threshold).long(), label.round().long()


def foreground_volume_ml(path: str | Path) -> float:
    """Volume of the non-zero voxels of a skull-stripped image in mL: the brain-mask (head-size) volume.

    Args:
        path: NIfTI file.

    Returns:
        number of non-zero voxels times the voxel volume (from the affine), in mL.
    """
    image = nib.load(str(path))
    voxel_ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    return float(np.count_nonzero(np.asanyarray(image.dataobj))) * voxel_ml


def classification_baselines(
    train_entries: Sequence[Mapping[str, Any]],
    test_entries: Sequence[Mapping[str, Any]],
    label_key: str = "sex",
    threshold: float = 0.5,
    volume_key: str | None = "t1",
    imaging_task: str | None = None,
    bias_correction: bool = False,
) -> dict[str, dict[str, Any]]:
    """Trivial baselines on the test split, fitted on the training split only.

    - ``training_prevalence``: P(positive) = the training split's positive fraction for everyone (AUC 0.5);
    - ``logistic_brain_volume`` (when ``volume_key`` is given): class-balanced logistic regression on the
      brain-mask volume of that image (:func:`foreground_volume_ml`). For sex this is the head-size cue; a
      model no better than it has learnt nothing beyond head size.

    Args:
        train_entries: manifest entries of the training split (absolute image paths).
        test_entries: manifest entries of the evaluated split.
        label_key: the label key.
        threshold: decision threshold on the probability.
        volume_key: image key to measure, or ``None`` to skip the volume baseline.
        imaging_task: ``"sex"`` to add ``imaging_features``, a class-balanced logistic model on brain volume
            and tissue fractions (:mod:`monai_ms.engines.metrics.imaging_features`), or None.
        bias_correction: measure the imaging features on N4-corrected images (the bundle's ``bias_correction``).

    Returns:
        baseline name -> :func:`~monai_ms.engines.metrics.scores.classification_metrics` dict, with a
        ``"probabilities"`` list in test order (and ``"volumes_ml"`` for the volume baseline).
    """
    y_train = binary_labels(train_entries, label_key)
    y_test = binary_labels(test_entries, label_key)
    prevalence = np.full(y_test.shape, y_train.mean())
    baselines: dict[str, dict[str, Any]] = {
        "training_prevalence": {**classification_metrics(prevalence, y_test, threshold), "probabilities": prevalence.tolist()}
    }
    if volume_key is not None:
        v_train = np.array([[foreground_volume_ml(e[volume_key])] for e in train_entries])
        v_test = np.array([[foreground_volume_ml(e[volume_key])] for e in test_entries])
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced")).fit(v_train, y_train)
        probability = model.predict_proba(v_test)[:, 1]
        baselines["logistic_brain_volume"] = {
            **classification_metrics(probability, y_test, threshold),
            "probabilities": probability.tolist(),
            "volumes_ml": v_test[:, 0].tolist(),
        }
    if imaging_task is not None:
        from monai_ms.engines.metrics.imaging_features import IMAGING_BASELINE, imaging_baseline

        fitted = imaging_baseline(train_entries, test_entries, label_key, imaging_task, bias_correction)
        if fitted is not None:
            probability = np.asarray(fitted["probabilities"])
            baselines[IMAGING_BASELINE] = {
                **classification_metrics(probability, y_test, threshold),
                "probabilities": probability.tolist(),
                "features": fitted["features"],
            }
    return baselines
