"""Input and target normalisation fitted on the training split and stored in the network."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_ms.data.split import subject_folds
from monai_ms.data.transforms import parse_sex

__all__ = [
    "fit_normalization",
    "fit_covariate_head",
    "fit_feature_paths",
    "fit_histogram_head",
    "subject_folds",
]

logger = logging.getLogger(__name__)


def fit_normalization(
    network: torch.nn.Module,
    entries: Sequence[Mapping[str, Any]],
    target_key: str | None = None,
    demographics: bool = True,
) -> dict[str, list[float]]:
    """Fit demographic and target statistics on the training entries and store them in ``network``.

    The statistics become buffers of the network (``set_normalization``), so checkpoints and the
    TorchScript export carry them: inference needs no side file and cannot use other statistics.
    Nothing from the validation or test split is looked at.

    Args:
        network: a monai_ms network with ``set_normalization`` (``DualStreamRegressor``,
            ``BrainRegressor3D``); a ``DistributedDataParallel`` wrapper is unwrapped.
        entries: manifest entries of the training split.
        target_key: regression target key (``"edss"``, ``"age"``), or ``None`` (classification).
        demographics: fit the (age, sex) statistics.

    Returns:
        the fitted statistics, as stored.
    """
    module = getattr(network, "module", network)
    if not entries:
        raise ValueError("cannot fit normalisation statistics on an empty training split")
    stats: dict[str, Any] = {}
    if demographics:
        features = np.array([[float(e["age"]), parse_sex(e["sex"])] for e in entries], dtype=np.float64)
        std = features.std(axis=0)
        stats["demographics_mean"] = features.mean(axis=0).tolist()
        stats["demographics_std"] = np.where(std > 0, std, 1.0).tolist()  # a one-sex cohort: leave sex unscaled
    if target_key is not None:
        target = np.array([float(e[target_key]) for e in entries], dtype=np.float64)
        stats["target_mean"] = float(target.mean())
        stats["target_std"] = float(target.std()) if target.std() > 0 else 1.0
    module.set_normalization(**stats)
    return stats


def fit_covariate_head(
    network: Any,
    entries: Sequence[Mapping[str, Any]],
    transform: Any,
    target_key: str = "edss",
    ridge: float = 1e-3,
    measured_features: dict[str, list[float]] | None = None,
    input_keys: Sequence[str] = ("t1", "t2", "demographics"),
) -> None:
    """Start a :class:`~monai_ms.networks.DualStreamRegressor`'s linear covariate path at the least-squares fit.

    The covariates (standardised demographics, the T1's tissue features when the network has them, and the
    lesion load of its pre-trained lesion pathway) of every training session are computed once, without
    augmentation. The tissue features' standardisation is set to their training means and standard
    deviations; ``covariate_head`` is set to the ridge solution for the standardised target and the MLP's
    last layer to zero, so training starts from the linear model and the CNN only learns what it leaves
    unexplained. On a few dozen scans the MLP otherwise memorises the training split long before the linear
    path has learnt. Call after :func:`fit_normalization` and ``load_lesion_network``.

    Args:
        network: the regressor (its normalisation buffers set).
        entries: training entries.
        transform: the evaluation chain producing the ``input_keys`` and ``target_key``.
        target_key: key of the target.
        ridge: L2 penalty of the fit (on standardised covariates).
        measured_features: filled with session id -> the measured covariates (``measured_covariates``: tissue
            features, lesion load) when none depends on a trained parameter (no lesion pathway, or a frozen
            segmenter), for :class:`~monai_ms.networks.ForwardWithLesionMap` to reuse at every training step:
            they are then those of the images without augmentation, as in evaluation. Left empty otherwise.
        input_keys: the network's three inputs in the transform's output (the bundle's ``input_keys``: the
            two image streams, :func:`monai_ms.networks.stream_keys`, and ``demographics``).

    Raises:
        ValueError: tissue features with a lesion pathway that trains (``lesion_freeze`` false, or the small
            lesion head): they could then only be measured on augmented images, whose background is not zero.
    """
    tissue = getattr(network, "tissue", None)
    segmenter = getattr(network, "lesion_network", None)
    frozen = bool(getattr(network, "lesion_from_images", False)) and not any(p.requires_grad for p in segmenter.parameters())
    parameter_free = frozen or not bool(getattr(network, "has_lesion_map", False))
    if tissue is not None and not parameter_free:
        raise ValueError(
            "network_def#tissue_features needs a frozen, pre-trained lesion pathway (lesion_freeze true and a lesion_init "
            "other than \"\") or none: with a pathway that trains, the tissue features would be measured on augmented "
            "images, whose background is not zero"
        )
    if tissue is not None:  # measure the raw features: standardised below, on the training split
        tissue.set_standardization(torch.zeros(tissue.out_features), torch.ones(tissue.out_features))
    captured: list[torch.Tensor] = []
    hook = network.covariate_head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    targets = []
    was_training = network.training
    network.eval()
    device = network.target_mean.device
    try:
        with torch.no_grad():
            for entry in entries:
                item = transform(dict(entry))
                t1, t2, demographics = (
                    torch.as_tensor(item[key]).as_subclass(torch.Tensor)[None].to(device) for key in input_keys
                )
                network(t1, t2, demographics.float())
                targets.append(torch.as_tensor(item[target_key], dtype=torch.float64).reshape(1, -1))
    finally:
        hook.remove()
        network.train(was_training)
    x = torch.cat(captured).to(torch.float64).cpu()  # (sessions, demographics + measured_width)
    first = int(network.demographics)  # the measured covariates follow the demographics (DualStreamRegressor._predict)
    if tissue is not None:
        raw = x[:, first : first + tissue.out_features]
        std = raw.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a feature no training scan varies stays unscaled
        tissue.set_standardization(raw.mean(dim=0), std)
        x[:, first : first + tissue.out_features] = (raw - raw.mean(dim=0)) / std
    if measured_features is not None and parameter_free and int(network.measured_width) > 0:
        measured_features.update({str(entry["session"]): x[i, first:].tolist() for i, entry in enumerate(entries)})
        names = ([f"{tissue.out_features} tissue features"] if tissue is not None else []) + (["the lesion load"] if frozen else [])
        logger.info(
            f"the measured covariates ({' and '.join(names)}) of {len(entries)} training sessions are computed once, "
            "without augmentation, not at every step"
        )
    y = (torch.cat(targets) - network.target_mean.double().cpu()) / network.target_std.double().cpu()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    penalty = ridge * len(x) * torch.eye(design.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    solution = torch.linalg.solve(design.T @ design + penalty, design.T @ y)  # (covariates + 1, out)
    with torch.no_grad():
        network.covariate_head.weight.copy_(solution[:-1].T.to(network.covariate_head.weight))
        network.covariate_head.bias.copy_(solution[-1].to(network.covariate_head.bias))
        _zero_last_linear(network.head)


def _zero_last_linear(head: torch.nn.Module) -> None:
    """Zero the MLP's output layer, so that the network starts as exactly its fitted linear path."""
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def _feature_paths(module: Any) -> list[tuple[str, Any, Any]]:
    """The linear feature paths a whole-volume network has: ``(name, feature module, its linear head)``."""
    paths = []
    for name in ("histogram", "tissue"):
        features, head = getattr(module, name, None), getattr(module, f"{name}_head", None)
        if features is not None and head is not None:
            paths.append((name, features, head))
    return paths


def fit_feature_paths(
    network: Any,
    entries: Sequence[Mapping[str, Any]],
    transform: Any,
    target_key: str,
    input_key: str = "image",
    alphas: Sequence[float] = tuple(np.logspace(-3, 4, 30)),
    leading_features: int | None = None,
    augment: Any = None,
    augment_copies: int = 1,
) -> dict[str, Any]:
    """Start a whole-volume network's linear feature paths at the linear model fitted on the training split.

    For a :class:`~monai_ms.networks.BrainRegressor3D` or :class:`~monai_ms.networks.BrainClassifier3D`
    built with ``histogram_bins > 0`` and/or ``tissue_features=True``. The features of every training image
    (intensity histogram, tissue features, or both side by side) are computed once, without augmentation;
    each path's standardisation buffers are set to the training means and standard deviations, and its
    head to its part of one ridge regression of the standardised target (regressor) or one class-balanced
    logistic regression (classifier) on all the features, the penalty chosen by cross-validation on the
    training split only (folds grouped by subject, :func:`subject_folds`); the MLP's last layer is zeroed.
    Training then starts from the linear model and the CNN learns only what it leaves unexplained: on a
    few dozen scans an encoder trained from scratch memorises the training split before it finds the
    global atrophy and brain-size cues. Call after :func:`fit_normalization`.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped).
        entries: training entries.
        transform: the evaluation chain producing ``input_key`` (the network input) and ``target_key``.
        target_key: key of the target (age in years; sex as produced by the chain, 1 = male).
        input_key: key of the network input.
        alphas: ridge penalties to choose from (regressor); the classifier chooses ``C = 1 / alpha``.
        leading_features: also fit the model on only the first ``k`` features (in path order: histogram bins,
            then tissue features, whose first is the brain share) and keep it unless all the features score
            better in the same inner cross-validation by more than one standard error of their fold scores
            (the one-standard-error rule); the features left out start at weight 0. With a few dozen
            training sessions a feature that carries no signal is not free: on coarse voxels the tissue
            fractions follow head size through partial volume, and a sex model fitted on size and fractions
            ranked worse than size alone (docs/generalisation.md). None: all features.
        augment: a channel-first array transform (e.g. MONAI's ``RandSimulateLowResolution``, its random state
            set for reproducibility) applied to each training image ``augment_copies`` times; each copy adds a
            row with the same target and subject, so the fit prefers features the transform does not move
            (a scan acquired at coarser voxels measures the same brain). The inner folds keep a subject's
            copies together. None: the images as they are.
        augment_copies: copies per training image with ``augment``.

    Returns:
        ``{"penalty": chosen alpha, "features": number of features, "used": features with a fitted weight,
        "paths": names, "sessions": n, "cv": the inner folds}`` (with ``leading_features``, also
        ``"scores"``: the inner-CV score and its standard error of each candidate); ``{}`` (and nothing
        changed) for a network without a feature path, so ``histogram_bins=0, tissue_features=False`` is a
        plain override.

    Raises:
        ValueError: the network has more than one output, the training split is empty, (classifier) it has
            fewer than 2 sessions of a class, or ``leading_features`` is below 1.
    """
    module = getattr(network, "module", network)
    paths = _feature_paths(module)
    if not paths:
        logger.info("the network has no linear feature path (histogram_bins=0, tissue_features=False): nothing to fit")
        return {}
    if leading_features is not None and int(leading_features) < 1:
        raise ValueError(f"leading_features must be None or at least 1, got {leading_features}")
    copies = int(augment_copies) if augment is not None else 0
    if augment is not None and copies < 1:
        raise ValueError(f"augment_copies must be at least 1 with augment, got {augment_copies}")
    outputs = max(int(head.out_features) for _, _, head in paths)
    if outputs != 1:
        raise ValueError(f"fit_feature_paths fits one output, the network has {outputs}")
    if not entries:
        raise ValueError("cannot fit the linear feature paths on an empty training split")
    device = paths[0][2].weight.device
    counts: list[list[torch.Tensor]] = [[] for _ in paths]
    targets = []
    rows: list[Mapping[str, Any]] = []  # the entry of each row (a subject's copies share its inner fold)
    with torch.no_grad():
        for index, entry in enumerate(entries):
            item = transform(dict(entry))
            image = torch.as_tensor(item[input_key]).as_subclass(torch.Tensor)
            # a scan's copies are one subject, also when the entry names none (subject_folds would give each row its own)
            row = entry if entry.get("subject") or not copies else {**entry, "subject": f"#entry{index}"}
            versions = [image] + [torch.as_tensor(augment(image.clone())).as_subclass(torch.Tensor) for _ in range(copies)]
            for version in versions:
                for store, (_, features, _) in zip(counts, paths):
                    store.append(features.counts(version[None].to(device)).double().cpu())
                targets.append(float(torch.as_tensor(item[target_key]).flatten()[0]))
                rows.append(row)
    blocks = []
    for store, (_, features, _) in zip(counts, paths):
        x = torch.cat(store)
        std = x.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a feature no training image varies stays unscaled
        features.set_standardization(x.mean(dim=0), std)
        blocks.append((x - x.mean(dim=0)) / std)
    x = torch.cat(blocks, dim=1).numpy()
    y = np.asarray(targets)
    classifier = not hasattr(module, "target_mean")
    if classifier:
        smallest = int(np.bincount(y.astype(int), minlength=2).min())
        if smallest < 2:
            class_counts = np.bincount(y.astype(int), minlength=2).tolist()
            raise ValueError(f"the training split needs at least 2 sessions of each class for {target_key!r}, got {class_counts}")
        y = y.astype(int)
        splits, cv = subject_folds(rows, labels=y)
    else:  # regressor: the head predicts the standardised target
        y = (y - float(module.target_mean[0])) / float(module.target_std[0])
        splits, cv = subject_folds(rows)
    used = x.shape[1]
    weight, bias, penalty, score, spread = _fit_linear(x, y, splits, alphas, classifier)
    scores: dict[str, list[float]] = {}
    if leading_features is not None and 0 < int(leading_features) < x.shape[1]:
        k = int(leading_features)
        small = _fit_linear(x[:, :k], y, splits, alphas, classifier)
        scores = {f"first {k}": [small[3], small[4]], f"all {x.shape[1]}": [score, spread]}
        if not score > small[3] + spread:  # the one-standard-error rule: the smaller model unless clearly worse
            used = k
            weight = np.concatenate([small[0], np.zeros((1, x.shape[1] - k))], axis=1)
            bias, penalty = small[1], small[2]
    start = 0
    with torch.no_grad():
        for index, (_, features, head) in enumerate(paths):
            width = int(features.out_features)
            head.weight.copy_(torch.as_tensor(weight[:, start : start + width], dtype=torch.float32))
            head.bias.fill_(bias if index == 0 else 0.0)  # one intercept, carried by the first path
            start += width
    _zero_last_linear(module.head)
    names = [name for name, _, _ in paths]
    chosen = ""
    if scores:
        pairs = ", ".join(f"{name} {value:.4g} +- {se:.2g}" for name, (value, se) in scores.items())
        if used < x.shape[1]:
            chosen = f"; the first {used} of them kept by the one-standard-error rule ({pairs})"
        else:
            chosen = f"; all of them kept, better than the first {leading_features} by more than one standard error ({pairs})"
    augmented = f" and {copies} augmented cop{'y' if copies == 1 else 'ies'} of each" if copies else ""
    logger.info(
        f"linear feature paths ({' + '.join(names)}) fitted on {len(entries)} sessions{augmented} ({x.shape[1]} features, "
        f"penalty {penalty:.3g} chosen by {cv}{chosen})"
    )
    result = {
        "penalty": penalty, "features": int(x.shape[1]), "used": used, "paths": names, "sessions": len(entries), "cv": cv,
        "augmented_copies": copies,
    }
    if scores:
        result["scores"] = scores
    return result


def _fit_linear(
    x: np.ndarray, y: np.ndarray, splits: Any, alphas: Sequence[float], classifier: bool
) -> tuple[np.ndarray, float, float, float, float]:
    """Fit one penalised linear model, the penalty chosen by ``splits``; the classifier is class balanced.

    Returns ``(weight (1, features), intercept, penalty, best mean inner-CV score, its standard error)``: the
    score is the negative log loss (classifier) or R^2 (regressor; what ``RidgeCV`` chose by before).
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV

    if classifier:
        estimator = LogisticRegression(class_weight="balanced", max_iter=10000)
        grid, scoring = {"C": [1.0 / a for a in alphas]}, "neg_log_loss"
    else:
        estimator, grid, scoring = Ridge(), {"alpha": list(alphas)}, None
    search = GridSearchCV(estimator, grid, scoring=scoring, cv=splits).fit(x, y)
    model, best = search.best_estimator_, int(search.best_index_)
    penalty = 1.0 / float(model.C) if classifier else float(model.alpha)
    spread = float(search.cv_results_["std_test_score"][best]) / math.sqrt(len(splits))
    intercept = float(np.ravel(model.intercept_)[0])
    return np.asarray(model.coef_, dtype=np.float64).reshape(1, -1), intercept, penalty, float(search.best_score_), spread


fit_histogram_head = fit_feature_paths  # the 0.4 name, kept for configs written against it
