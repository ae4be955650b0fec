"""Subject-resampling bootstrap: 95% intervals for dataset-level metrics of one evaluated split.

A cohort has several sessions per patient, and a patient's sessions are not independent (same brain,
same scanner, similar errors). Resampling sessions would treat them as independent and give intervals
that are too narrow; this module resamples **subjects** with replacement and takes all sessions of each
drawn subject (a cluster bootstrap), then recomputes the metric with the project's own metric function
(:func:`~monai_ms.engines.metrics.scores.regression_metrics`,
:func:`~monai_ms.engines.metrics.scores.classification_metrics`,
:func:`~monai_ms.engines.metrics.segmentation.summarize_segmentation`) on each resample. The interval is the
percentile interval of the resampled values (2.5th and 97.5th percentiles for 95%). Resamples where a
metric is undefined (e.g. AUC of a resample with one class) are left out of that metric's interval and
counted.

The same resamples are used for the model and its baselines (paired), so the interval of their
difference is available too (:func:`bootstrap_metrics` with a ``difference``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "resample_indices", "percentile_interval", "bootstrap_metrics"]

DEFAULT_RESAMPLES = 1000


def resample_indices(
    groups: Sequence[Any] | None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    n_items: int | None = None,
) -> list[np.ndarray]:
    """Index arrays of bootstrap resamples that draw whole groups (subjects) with replacement.

    Args:
        groups: the group (subject) of each item (session), shape ``(N,)``; ``None`` resamples the items
            themselves (a session bootstrap, for comparison only).
        n_resamples: number of resamples.
        seed: seed of the ``numpy`` generator (the same seed gives the same resamples).
        n_items: number of items when ``groups`` is None.

    Returns:
        ``n_resamples`` integer arrays of item indices; each holds every item of each drawn group, once
        per draw, so a subject's sessions always stay together.

    Raises:
        ValueError: no items, or ``n_resamples < 1``.

    Examples:
        >>> idx = resample_indices(["a", "a", "b"], n_resamples=2, seed=0)
        >>> all(sorted(i.tolist()) in ([0, 1, 0, 1], [0, 1, 2], [2, 2]) for i in idx)
        True
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if groups is None:
        if not n_items:
            raise ValueError("nothing to resample: no items")
        return [rng.integers(0, n_items, size=n_items) for _ in range(n_resamples)]
    labels = [str(g) for g in groups]
    if not labels:
        raise ValueError("nothing to resample: no items")
    names = list(dict.fromkeys(labels))  # first-appearance order, so results do not depend on hashing
    members: dict[str, list[int]] = {name: [] for name in names}
    for index, name in enumerate(labels):
        members[name].append(index)
    blocks = [np.asarray(members[name], dtype=np.int64) for name in names]
    return [np.concatenate([blocks[k] for k in rng.integers(0, len(blocks), size=len(blocks))]) for _ in range(n_resamples)]


def percentile_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the finite ``values``; ``[nan, nan]`` when none is finite.

    Examples:
        >>> percentile_interval(np.arange(101.0), 0.9)
        [5.0, 95.0]
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return [math.nan, math.nan]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(array, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _scalars(result: Mapping[str, Any]) -> dict[str, float]:
    # float metrics only: counts (n, lesion counts) and lists (confusion matrices) have no interval here
    return {k: float(v) for k, v in result.items() if isinstance(v, float) or isinstance(v, np.floating)}


def bootstrap_metrics(
    compute: Callable[[np.ndarray], Mapping[str, Mapping[str, Any]]],
    groups: Sequence[Any] | None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    difference: tuple[str, str, str] | None = None,
    n_items: int | None = None,
) -> dict[str, Any]:
    """Bootstrap intervals of every float metric of several predictors, on paired resamples.

    Args:
        compute: maps an index array (into the evaluated sessions) to ``{predictor: metrics dict}``, e.g.
            ``{"model": regression_metrics(pred[i], true[i]), "training_median": ...}``; it must use the
            same metric function as the reported point estimates.
        groups: the subject of each session (``None``: a session bootstrap, see :func:`resample_indices`).
        n_resamples: number of resamples.
        seed: resampling seed.
        confidence: interval coverage.
        difference: ``(metric, predictor_a, predictor_b)``: also the interval of
            ``metric(a) - metric(b)`` over the same resamples (e.g. model MAE minus baseline MAE).
        n_items: number of sessions, needed only when ``groups`` is None.

    Returns:
        ``{"method", "unit", "n_subjects", "n_sessions", "n_resamples", "seed", "confidence",
        "intervals": {predictor: {metric: [low, high]}}, "undefined_resamples": {predictor: {metric: k}}}``
        (``undefined_resamples`` lists only metrics undefined in some resample) and, with ``difference``,
        ``"difference": {"metric", "a", "b", "interval"}``.

    Raises:
        ValueError: no sessions.

    Examples:
        >>> from monai_ms.engines.metrics.scores import regression_metrics
        >>> pred, true = np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.5, 2.0, 2.0, 4.0])
        >>> out = bootstrap_metrics(lambda i: {"model": regression_metrics(pred[i], true[i])}, ["a", "a", "b", "c"], 200)
        >>> out["n_subjects"], len(out["intervals"]["model"]["mae"])
        (3, 2)
    """
    n_sessions = len(groups) if groups is not None else int(n_items or 0)
    resamples = resample_indices(groups, n_resamples, seed, n_items=n_sessions)
    values: dict[str, dict[str, list[float]]] = {}
    diffs: list[float] = []
    for index in resamples:
        results = compute(index)
        for predictor, result in results.items():
            per_metric = values.setdefault(predictor, {})
            for metric, value in _scalars(result).items():
                per_metric.setdefault(metric, []).append(value)
        if difference is not None:
            metric, a, b = difference
            diffs.append(float(results[a][metric]) - float(results[b][metric]))
    intervals = {p: {m: percentile_interval(v, confidence) for m, v in metrics.items()} for p, metrics in values.items()}
    undefined = {
        p: {m: int(np.sum(~np.isfinite(v))) for m, v in metrics.items() if not np.all(np.isfinite(v))}
        for p, metrics in values.items()
    }
    out: dict[str, Any] = {
        "method": "percentile bootstrap"
        + (
            ", resampling subjects with replacement (all sessions of a drawn subject)"
            if groups is not None
            else ", resampling sessions"
        ),
        "unit": "subject" if groups is not None else "session",
        "n_subjects": len(set(map(str, groups))) if groups is not None else None,
        "n_sessions": n_sessions,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": float(confidence),
        "intervals": intervals,
        "undefined_resamples": {p: u for p, u in undefined.items() if u},
    }
    if difference is not None:
        metric, a, b = difference
        out["difference"] = {"metric": metric, "a": a, "b": b, "interval": percentile_interval(diffs, confidence)}
    return out
