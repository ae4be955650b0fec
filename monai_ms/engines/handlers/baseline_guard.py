"""A guard users see: a model no better than its trivial baseline is flagged, at training and at evaluation.

A network that learnt nothing still produces numbers, and numbers end up in papers. Two checks:

- at the end of training, :class:`BaselineGuard` compares the best validation metric with the trivial
  baseline's value on the same validation split and, when the model is no better, logs one WARNING line;
- at evaluation, the report handlers write ``"beats_baselines"`` into ``metrics.json`` (via
  :func:`compare_with_baselines`), naming the baseline compared with.

Trivial baselines of the validation key metric, per task (:data:`TRIVIAL_BASELINES`):

==============  ===============  =====================  ==============================================
task            key metric       baseline               value on the validation split
==============  ===============  =====================  ==============================================
``edss``        MAE (lower)      ``training_median``    MAE of predicting the training split's median
``brain_age``   MAE (lower)      ``training_median``    MAE of predicting the training split's median age
``sex``         AUC (higher)     ``training_prevalence``  0.5 (a constant score ranks no one)
``lesion_seg``  mean Dice        ``empty_mask``         0 (an empty mask overlaps no lesion)
==============  ===============  =====================  ==============================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = [
    "TRIVIAL_BASELINES",
    "is_better",
    "compare_with_baselines",
    "trivial_validation_baseline",
    "BaselineGuard",
]

logger = logging.getLogger(__name__)

# task -> (baseline name, metric name in words, lower is better, target key)
TRIVIAL_BASELINES: dict[str, tuple[str, str, bool, str | None]] = {
    "edss": ("training_median", "MAE", True, "edss"),
    "brain_age": ("training_median", "MAE", True, "age"),
    "sex": ("training_prevalence", "AUC", False, "sex"),
    "lesion_seg": ("empty_mask", "mean Dice", False, None),
}


def is_better(model: float, baseline: float, lower_is_better: bool) -> bool:
    """Strictly better (a tie is not better); False when either value is undefined (NaN/None).

    Examples:
        >>> is_better(0.9, 1.0, lower_is_better=True), is_better(0.5, 0.5, lower_is_better=False)
        (True, False)
    """
    if model is None or baseline is None or not (math.isfinite(model) and math.isfinite(baseline)):
        return False
    return model < baseline if lower_is_better else model > baseline


def compare_with_baselines(
    model: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]], metric: str, lower_is_better: bool
) -> dict[str, Any]:
    """Compare the model's ``metric`` with the best baseline's on the same sessions.

    Args:
        model: the model's metrics dict.
        baselines: baseline name -> metrics dict.
        metric: the key, e.g. ``"mae"``, ``"auc"``, ``"mean_dice"``.
        lower_is_better: direction of ``metric``.

    Returns:
        ``{"beats_baselines": bool or None, "metric", "lower_is_better", "model", "baseline" (the best
        baseline's name), "baseline_value", "baselines": {name: value}}``; ``beats_baselines`` is None when
        the model's metric or every baseline's is undefined.

    Examples:
        >>> compare_with_baselines({"mae": 1.0}, {"median": {"mae": 1.2}, "linear": {"mae": 0.9}}, "mae", True)["baseline"]
        'linear'
    """
    values = {name: _finite(b.get(metric)) for name, b in baselines.items()}
    defined = {name: v for name, v in values.items() if v is not None}
    own = _finite(model.get(metric))
    best = (min if lower_is_better else max)(defined, key=defined.get) if defined else None
    beats = None if own is None or best is None else is_better(own, defined[best], lower_is_better)
    return {
        "beats_baselines": beats,
        "metric": metric,
        "lower_is_better": lower_is_better,
        "model": own,
        "baseline": best,
        "baseline_value": defined.get(best) if best is not None else None,
        "baselines": values,
    }


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trivial_validation_baseline(
    task: str,
    train_entries: Sequence[Mapping[str, Any]],
    val_entries: Sequence[Mapping[str, Any]],
    target_key: str | None = None,
) -> dict[str, Any]:
    """The trivial baseline's value of the task's validation key metric (table in the module docstring).

    Args:
        task: ``"edss"``, ``"brain_age"``, ``"sex"`` or ``"lesion_seg"``.
        train_entries: manifest entries of the training split (the median / prevalence is fitted there).
        val_entries: manifest entries of the validation split.
        target_key: overrides the task's target key.

    Returns:
        ``{"name", "metric", "value", "lower_is_better"}``.

    Raises:
        ValueError: an unknown task.

    Examples:
        >>> trivial_validation_baseline("edss", [{"edss": 1.0}, {"edss": 3.0}, {"edss": 2.0}], [{"edss": 4.0}])["value"]
        2.0
    """
    if task not in TRIVIAL_BASELINES:
        raise ValueError(f"no trivial baseline known for task {task!r}; known: {sorted(TRIVIAL_BASELINES)}")
    name, metric, lower, default_key = TRIVIAL_BASELINES[task]
    key = target_key or default_key
    if task in ("edss", "brain_age"):
        from monai_ms.engines.metrics.scores import regression_baselines

        value = regression_baselines(train_entries, val_entries, key, linear_on_demographics=False)[name]["mae"]
    elif task == "sex":
        from monai_ms.engines.metrics.classification import classification_baselines

        value = classification_baselines(train_entries, val_entries, key, volume_key=None)[name]["auc"]
    else:
        value = 0.0  # Dice of an empty prediction on every scan with a reference lesion
    return {"name": name, "metric": metric, "value": float(value), "lower_is_better": lower}


class BaselineGuard:
    """At the end of training, warn in one line when the best validation metric does not beat the trivial baseline.

    Attach to the trainer (``train#handlers``); it reads the validation evaluator's ``best_metric`` when
    the trainer completes (also after early stopping).

    Args:
        evaluator: the validation evaluator (its ``state.best_metric`` is the checkpointed model's metric).
        task: selects the baseline, see :data:`TRIVIAL_BASELINES`.
        train_entries: manifest entries of the training split.
        val_entries: manifest entries of the validation split.
        target_key: overrides the task's target key.
        enabled: False on DDP ranks other than 0 (one line per run, not per process).

    Examples:
        In ``train.json``'s ``train#handlers``: ``{"_target_": "monai_ms.engines.BaselineGuard", "evaluator":
        "@validate#evaluator", "task": "@task", "train_entries": "@train#datalist", "val_entries":
        "@validate#datalist", "enabled": "@main_process"}``.
    """

    def __init__(
        self,
        evaluator: Engine,
        task: str,
        train_entries: Sequence[Mapping[str, Any]],
        val_entries: Sequence[Mapping[str, Any]],
        target_key: str | None = None,
        enabled: bool = True,
    ) -> None:
        if task not in TRIVIAL_BASELINES:
            raise ValueError(f"BaselineGuard: no trivial baseline known for task {task!r}; known: {sorted(TRIVIAL_BASELINES)}")
        self.evaluator = evaluator
        self.task = task
        self.train_entries, self.val_entries = list(train_entries), list(val_entries)
        self.target_key = target_key
        self.enabled = enabled
        self.result: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any] | None:
        state = self.evaluator.state
        if getattr(state, "best_metric_epoch", -1) in (-1, None):
            if self.enabled:
                logger.warning("no validation ran: cannot tell whether the model beats its trivial baseline")
            return None
        baseline = trivial_validation_baseline(self.task, self.train_entries, self.val_entries, self.target_key)
        best = float(state.best_metric)
        beats = is_better(best, baseline["value"], baseline["lower_is_better"])
        self.result = {"beats_baseline": beats, "best_metric": best, "best_epoch": int(state.best_metric_epoch), **baseline}
        if not self.enabled:
            return self.result
        line = (
            f"best validation {baseline['metric']} {best:.4f} (epoch {state.best_metric_epoch}) vs trivial baseline "
            f"'{baseline['name']}' {baseline['value']:.4f} on the same {len(self.val_entries)} validation sessions"
        )
        if beats:
            logger.info(f"{line}: the model beats it")
        else:
            logger.warning(f"MODEL NO BETTER THAN ITS TRIVIAL BASELINE: {line}; do not report this model as a result")
        return self.result
