"""K-fold cross-validation of a bundle on the subject-grouped folds of a manifest.

For each fold ``k`` of the manifest's ``folds`` (every training/validation entry carries ``"fold": k``;
``monai-ms manifest split --folds K`` writes them), :func:`run_cross_validation`

1. writes a fold manifest: ``training`` = the entries of the other folds, ``validation`` = fold ``k``,
   no ``testing`` (the manifest's test split is never read: it is dropped as the manifest is loaded);
2. trains the bundle with its defaults plus the given overrides, ``python -m monai.bundle run training``
   in a subprocess, into ``OUT/fold_k/{models,eval}`` (never the bundle's own ``models/``);
3. evaluates the checkpoint on fold ``k`` (``python -m monai.bundle run evaluating`` with
   ``--eval_split validation``: ``evaluate.json`` reads the split named by its ``eval_split`` key);
4. scores fold ``k``'s predictions with the project's metric functions
   (:func:`~monai_ms.engines.metrics.scores.regression_metrics`,
   :func:`~monai_ms.engines.metrics.scores.classification_metrics`,
   :func:`~monai_ms.engines.metrics.segmentation.summarize_segmentation`).

Then the predictions of all folds are concatenated and scored once more (``pooled``: every non-test
session predicted by a model that did not see its subject), and each metric's mean and SD over the
folds are computed; ``OUT/cv.json`` and ``OUT/cv.md`` hold all three, the pooled metrics with a 95%
percentile-bootstrap interval that resamples subjects (:mod:`monai_ms.engines.metrics.bootstrap`).
The baselines are pooled the same way (:func:`pooled_report`): each fold's evaluation wrote what its
baselines, fitted on that fold's training split, predict for every held-out session (``baseline_<name>``
columns), so the pooled table scores the model against the training median, brain volume alone or the
imaging-feature model on all non-test subjects at once, with ``beats_baselines`` and the interval of the
difference. A model that does not beat its trivial baseline there gets a WARNING line and a bold NO in
``cv.md``. With 5 folds of a 60-subject cohort that is about 50 subjects instead of a test split's 9.

A manifest without folds gets them from the training + validation pool, split by subject with
:func:`~monai_ms.data.split.split_entries` (stratified by sex and EDSS bin, ``seed``); ``cv.json``
says so. Every output is written atomically and a fold's record ``fold_k/fold.json`` last, so a rerun
of the same command skips finished folds (and a trained fold whose evaluation did not finish is only
re-evaluated, as is one whose ``evaluate.json`` changed); a fold trained with other settings (``train.json``,
overrides or folds) is refused rather than mixed in.

Per-fold files: in a string override, ``{fold}`` becomes the fold number, so a fold's model can use
another cross-validation's model of the same fold, e.g. the EDSS bundle's frozen lesion segmenter:
``monai-ms cv bundles/lesion_seg ... --out cv/lesion_seg`` first, then ``monai-ms cv bundles/edss ...
--set lesion_init=cv/lesion_seg/fold_{fold}/models/model.pt`` (same manifest, ``--folds``, ``--seed``
and ``--inner_validation``, hence the same folds; the EDSS run refuses a segmenter trained on subjects it
is scored on).

Model selection: by default the bundle's early stopping and best-checkpoint choice look at the
``validation`` split, which is the held-out fold, so the per-fold figures are those of the best epoch on
that fold (optimistic when the validation metric is noisy). ``inner_validation=F`` holds out F of the
training folds' subjects for that choice instead and evaluates the held-out fold as the fold manifest's
``testing`` (``--eval_split testing``); ``cv.json`` records which.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_ms.bundle.config import override_args
from monai_ms.data.fields import SEX_CODES
from monai_ms.data.manifest import ManifestError, read_manifest, rebase_paths, write_manifest
from monai_ms.errors import UserError
from monai_ms.io import sha256_file, sha256_json, write_csv, write_json, write_text

__all__ = [
    "CrossValidationError",
    "TaskScorer",
    "TASK_SCORERS",
    "RESERVED_OVERRIDES",
    "FOLD_PLACEHOLDER",
    "overrides_of_fold",
    "manifest_folds",
    "fold_manifest",
    "score_table",
    "summarize_folds",
    "score_baselines",
    "pooled_report",
    "pooled_summary",
    "run_cross_validation",
    "compare_runs",
    "markdown_table",
]

logger = logging.getLogger(__name__)

# set by the cv command for every fold; an override of these would defeat the per-fold isolation
RESERVED_OVERRIDES = (
    "data_manifest", "output_dir", "ckpt_dir", "cache_dir", "eval_split", "fold", "resume",
    "checkpoint", "age_bias_file", "predictions_csv",  # each fold evaluates its own model and writes its own files
)
FOLD_PLACEHOLDER = "{fold}"
FOLD_RECORD = "fold.json"
TRAINED_RECORD = "trained.json"
SELECTION_NOTE = (
    "early stopping and the best checkpoint are chosen on the validation split, which is the held-out fold "
    "(the per-fold figures are those of the best epoch on that fold; --inner_validation F avoids this)"
)
INNER_SELECTION_NOTE = (
    "early stopping and the best checkpoint are chosen on an inner validation split of the training folds "
    "({share:g} of their subjects); the held-out fold is seen only by the evaluation"
)


class CrossValidationError(UserError, RuntimeError):
    """A cross-validation run that cannot start or continue; the message is one line naming the cause."""


@dataclass(frozen=True)
class TaskScorer:
    """How a bundle's evaluation table is scored: which file, which columns, which metric function.

    Args:
        table: the evaluation's per-session CSV in ``output_dir``.
        score: function of the concatenated table (a ``pandas.DataFrame``) and the name of the column to score
            as the prediction, returning a metrics dict.
        columns: headline metrics of the markdown table, in order.
        metric: the metric that decides whether the model beats its baselines (as in ``metrics.json``).
        lower_is_better: its direction.
        prediction: the model's column of the table; each ``baseline_<name>`` column of the table is scored in
            its place (None: the table holds no per-session baseline predictions).
    """

    table: str
    score: Callable[[Any, str | None], dict[str, Any]]
    columns: tuple[str, ...]
    metric: str
    lower_is_better: bool
    prediction: str | None = None


def _regression(target: str, within: float | None = None) -> Callable[[Any, str | None], dict[str, Any]]:
    def score(frame: Any, prediction: str | None) -> dict[str, Any]:
        from monai_ms.engines.metrics.scores import regression_metrics

        return regression_metrics(frame[prediction].to_numpy(float), frame[target].to_numpy(float), within)

    return score


def _sex(frame: Any, prediction: str | None) -> dict[str, Any]:
    from monai_ms.engines.metrics.scores import classification_metrics

    labels = frame["sex"].astype(str).str.upper().map(SEX_CODES)
    if labels.isna().any():
        bad = frame.loc[labels.isna(), "sex"].iloc[0]
        raise CrossValidationError(f"predictions.csv: sex must be F or M, got {bad!r}")
    return classification_metrics(frame[prediction].to_numpy(float), labels.to_numpy(int))


def _segmentation(frame: Any, prediction: str | None) -> dict[str, Any]:  # per-scan metrics, no column
    from monai_ms.engines.metrics.segmentation import summarize_segmentation

    return summarize_segmentation(frame.to_dict("records"))


# task (the ``task`` key of train.json) -> scorer of its evaluation table
TASK_SCORERS: dict[str, TaskScorer] = {
    "brain_age": TaskScorer(
        "predictions.csv", _regression("age"), ("n", "mae", "rmse", "pearson_r", "r2"), "mae", True, "age_pred"
    ),
    "edss": TaskScorer(
        "predictions.csv",
        _regression("edss", within=1.0),
        ("n", "mae", "rmse", "pearson_r", "within_1"),
        "mae",
        True,
        "prediction",
    ),
    "sex": TaskScorer(
        "predictions.csv", _sex, ("n", "auc", "accuracy", "balanced_accuracy", "brier", "ece"), "auc", False, "p_male"
    ),
    "lesion_seg": TaskScorer(
        "per_scan.csv", _segmentation, ("n_scans", "mean_dice", "median_dice", "lesion_tpr", "lesion_f1"), "mean_dice", False
    ),
}
BASELINE_PREFIX = "baseline_"  # the evaluation tables' per-session baseline predictions: baseline_<name>


# --------------------------------------------------------------------------------------------- folds


def manifest_folds(
    manifest_path: str | os.PathLike, folds: int, seed: int = 0
) -> tuple[list[list[dict]], dict[str, Any]]:
    """The training + validation entries of a manifest divided into its subject-grouped folds.

    The ``testing`` list is dropped as soon as the file is read. With folds in the manifest (every
    training/validation entry has an integer ``fold``) these are used; otherwise they are made from the
    pool with :func:`~monai_ms.data.split.split_entries` (``test_fraction=0``, stratified by sex and
    EDSS, ``seed``).

    Args:
        manifest_path: the manifest file.
        folds: number of folds K (>= 2); must match the manifest's folds when it has them.
        seed: seed of the split when the folds are made here.

    Returns:
        ``(entries per fold, info)``: K lists of entry copies, image paths relative to the manifest's
        folder as in the file; info ``{"source", "k", "seed"|None, "sessions", "subjects"}``.

    Raises:
        ManifestError: unreadable manifest, some entries with a fold and some without, fold numbers that
            are not ``0..K-1``, a subject with sessions in two folds, or too few subjects for K folds.

    Examples:
        >>> per_fold, info = manifest_folds("demo_data/v2/manifest.json", folds=5)  # doctest: +SKIP
        >>> info["source"]  # doctest: +SKIP
        'made by split_entries from the training + validation pool (seed 0)'
    """
    from monai_ms.data.split import split_entries

    path = Path(manifest_path)
    manifest = read_manifest(path)
    manifest.pop("testing", None)  # never read: the test split is for the final evaluation only
    manifest.pop("folds", None)  # session lists may name test sessions; the per-entry "fold" is used
    pool = [dict(e) for split in ("training", "validation") for e in manifest[split]]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ManifestError(f"--folds must be an integer >= 2, got {folds!r}")
    if not pool:
        raise ManifestError(f"{path}: the training and validation splits are empty; nothing to cross-validate")
    with_fold = [e for e in pool if "fold" in e]
    if with_fold and len(with_fold) < len(pool):
        first = next(e for e in pool if "fold" not in e)
        raise ManifestError(
            f"{path}: {len(with_fold)} of {len(pool)} training/validation entries have a 'fold', session "
            f"{first.get('session')} has none; rebuild the folds with monai-ms manifest split --folds K"
        )
    if with_fold:
        found = {e["fold"] for e in pool}
        if any(isinstance(f, bool) or not isinstance(f, int) for f in found) or found != set(range(len(found))):
            raise ManifestError(f"{path}: fold numbers must be the integers 0..K-1, got {sorted(found, key=str)}")
        if len(found) != folds:
            raise ManifestError(
                f"{path}: the manifest has {len(found)} folds, --folds asks for {folds}; pass --folds {len(found)} "
                f"or write a manifest with {folds} folds (monai-ms manifest split {path} --out NEW.json --folds {folds})"
            )
        source, used_seed = "the manifest's folds", None
    else:
        split = split_entries(pool, test_fraction=0.0, folds=folds, seed=seed)
        pool = split["training"] + split["validation"]
        source, used_seed = f"made by split_entries from the training + validation pool (seed {seed})", seed
    per_fold: list[list[dict]] = [[] for _ in range(folds)]
    fold_of_subject: dict[str, int] = {}
    for entry in pool:
        subject, fold = str(entry.get("subject")), int(entry["fold"])
        if fold_of_subject.setdefault(subject, fold) != fold:
            raise ManifestError(
                f"{path}: subject {subject} has sessions in folds {fold_of_subject[subject]} and {fold} "
                f"(session {entry.get('session')}); folds must be by subject"
            )
        per_fold[fold].append(entry)
    info = {
        "source": source,
        "k": folds,
        "seed": used_seed,
        "sessions": [len(f) for f in per_fold],
        "subjects": [len({e["subject"] for e in f}) for f in per_fold],
    }
    return per_fold, info


def overrides_of_fold(overrides: Mapping[str, Any], fold: int) -> dict[str, Any]:
    """The overrides of one fold: ``{fold}`` in a string value becomes the fold number.

    Examples:
        >>> overrides_of_fold({"lesion_init": "cv/lesion_seg/fold_{fold}/models/model.pt", "epochs": 3}, 2)
        {'lesion_init': 'cv/lesion_seg/fold_2/models/model.pt', 'epochs': 3}
    """
    return {k: v.replace(FOLD_PLACEHOLDER, str(fold)) if isinstance(v, str) else v for k, v in overrides.items()}


def fold_manifest(
    per_fold: Sequence[Sequence[Mapping[str, Any]]],
    fold: int,
    source_dir: Path,
    out_dir: Path,
    inner_validation: float = 0.0,
    seed: int = 0,
) -> dict:
    """The manifest of one fold.

    By default ``training`` = the other folds, ``validation`` = ``fold`` and no ``testing``: the bundle's
    early stopping and best checkpoint then look at the held-out fold. With ``inner_validation`` > 0 that
    share of the other folds' subjects becomes ``validation`` (split by subject with
    :func:`~monai_ms.data.split.split_entries`, stratified, ``seed + fold``), the rest ``training``, and the
    held-out fold is the fold manifest's ``testing``, seen by nothing but the final evaluation.

    Args:
        per_fold: entries per fold, as from :func:`manifest_folds`.
        fold: the held-out fold.
        source_dir: folder of the source manifest (relative image paths are relative to it).
        out_dir: folder the fold manifest is written to (its paths are rebased there).
        inner_validation: share of the training folds' subjects for validation, in [0, 1).
        seed: seed of the inner split.

    Returns:
        the manifest dict (entries keep their ``fold``).

    Raises:
        ManifestError: ``inner_validation`` not in [0, 1), or too few subjects to split.
    """
    from monai_ms.data.split import split_entries

    others = [dict(e) for k, entries in enumerate(per_fold) if k != fold for e in entries]
    held_out = rebase_paths(per_fold[fold], source_dir, out_dir)
    name = f"cross-validation fold {fold} of {len(per_fold)}"
    if not inner_validation:
        return {
            "name": name,
            "description": "training = the other folds, validation = this fold; the test split is not included",
            "training": rebase_paths(others, source_dir, out_dir),
            "validation": held_out,
            "testing": [],
        }
    inner = split_entries(others, val_fraction=inner_validation, test_fraction=0.0, seed=seed + fold)
    fold_of = {e["session"]: e["fold"] for e in others}  # split_entries drops "fold"
    training, validation = ([{**e, "fold": fold_of[e["session"]]} for e in inner[split]] for split in ("training", "validation"))
    return {
        "name": name,
        "description": (
            f"training and validation (early stopping, checkpoint choice) = the other folds, split by subject "
            f"({inner_validation:g} of their subjects for validation); testing = this fold, not the manifest's test split"
        ),
        "training": rebase_paths(training, source_dir, out_dir),
        "validation": rebase_paths(validation, source_dir, out_dir),
        "testing": held_out,
    }


# --------------------------------------------------------------------------------------------- scores


def score_table(task: str, frame: Any, prediction: str | None = None) -> dict[str, Any]:
    """Score one evaluation table (a fold's, or the folds' concatenation) with the task's metric function.

    Args:
        task: a key of :data:`TASK_SCORERS`.
        frame: ``pandas.DataFrame`` read from the task's table.
        prediction: the column scored as the prediction (default: the model's, ``TaskScorer.prediction``).

    Returns:
        the metric dict of the project's metric function (``n`` / ``n_scans`` included).

    Raises:
        CrossValidationError: an unknown task or a table without the columns the task needs.
    """
    if task not in TASK_SCORERS:
        raise CrossValidationError(f"task must be one of {', '.join(TASK_SCORERS)}, got {task!r}")
    try:
        return TASK_SCORERS[task].score(frame, prediction or TASK_SCORERS[task].prediction)
    except KeyError as error:
        raise CrossValidationError(
            f"{TASK_SCORERS[task].table}: column {error} missing (columns: {', '.join(map(str, frame.columns))})"
        ) from None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    }


def summarize_folds(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and SD (``ddof=1``) over folds of every scalar metric; NaN folds are left out and counted.

    Args:
        fold_metrics: one metric dict per fold.

    Returns:
        metric -> ``{"mean", "sd", "n_folds"}`` (``n_folds``: folds where the metric is defined).

    Examples:
        >>> summarize_folds([{"mae": 1.0}, {"mae": 3.0}])["mae"]
        {'mean': 2.0, 'sd': 1.4142135623730951, 'n_folds': 2}
    """
    values: dict[str, list[float]] = defaultdict(list)
    for metrics in fold_metrics:
        for key, value in _scalars(metrics).items():
            if math.isfinite(value):
                values[key].append(value)
    return {
        key: {
            "mean": float(np.mean(v)),
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
            "n_folds": len(v),
        }
        for key, v in values.items()
    }


def score_baselines(task: str, frame: Any) -> dict[str, dict[str, Any]]:
    """Score every ``baseline_<name>`` column of an evaluation table in place of the model's predictions.

    The evaluation writes, per session, what each baseline fitted on that run's training split predicts
    (``baseline_training_median``, ``baseline_logistic_brain_volume``, ``baseline_imaging_features``, ...);
    scored with the task's own metric function they give the baselines' figures on the same sessions.

    Args:
        task: a key of :data:`TASK_SCORERS`.
        frame: ``pandas.DataFrame`` read from the task's table (one fold's, or the folds' concatenation).

    Returns:
        baseline name -> metric dict (empty for a task whose table has no baseline columns).

    Examples:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"age": [30.0, 50.0], "age_pred": [32.0, 47.0], "baseline_training_median": [40.0, 40.0]})
        >>> score_baselines("brain_age", frame)["training_median"]["mae"]
        10.0
    """
    if task not in TASK_SCORERS or TASK_SCORERS[task].prediction is None:
        return {}
    columns = [c for c in frame.columns if str(c).startswith(BASELINE_PREFIX)]
    return {c[len(BASELINE_PREFIX) :]: score_table(task, frame, prediction=c) for c in columns}


def pooled_report(
    task: str, frame: Any, subjects: Mapping[str, str], n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The pooled predictions scored as an evaluation scores its split: the model, every baseline, intervals.

    The same steps as an evaluation's ``metrics.json`` (:func:`monai_ms.engines.handlers.report.finish_report`),
    on every non-test session of the folds: the model's metrics and each baseline's (:func:`score_baselines`;
    each fold's baselines were fitted on that fold's training split), 95% subject-bootstrap intervals on paired
    resamples, the interval of the model-minus-best-trivial-baseline difference, ``beats_baselines`` and, with
    an imaging-feature baseline, ``beats_imaging_features``.

    Args:
        task: a key of :data:`TASK_SCORERS`.
        frame: the concatenated evaluation tables (a ``session`` column).
        subjects: session id -> subject id.
        n_resamples: bootstrap resamples; 0 for none (no intervals).
        seed: resampling seed.

    Returns:
        ``{"model", "baselines", "beats_baselines", "baseline_comparison"}``, with ``"beats_imaging_features"``
        and ``"uncertainty"`` where they apply.

    Raises:
        CrossValidationError: a session of the table with no known subject.
    """
    from monai_ms.engines.handlers.report import finish_report

    sessions = frame["session"].astype(str).tolist()
    unknown = [s for s in sessions if s not in subjects]
    if unknown:
        raise CrossValidationError(f"pooled predictions: session {unknown[0]} is in no fold")
    frame = frame.reset_index(drop=True)
    scorer = TASK_SCORERS[task]

    def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
        part = frame.iloc[index]
        return {"model": score_table(task, part), **score_baselines(task, part)}

    report = {"model": score_table(task, frame), "baselines": score_baselines(task, frame)}
    return finish_report(
        report,
        compute,
        [subjects[s] for s in sessions],
        scorer.metric,
        scorer.lower_is_better,
        n_resamples=n_resamples,
        seed=seed,
    )


def pooled_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``cv.json`` taken from a :func:`pooled_report`: ``pooled`` (the model's metrics),
    ``pooled_ci95`` (the bootstrap's settings and ``intervals``: ``pooled`` for the model, one per baseline;
    None without resamples), ``pooled_baselines`` (each with its ``ci95``), ``beats_baselines``,
    ``beats_imaging_features`` (None without an imaging-feature baseline) and ``baseline_comparison``."""
    model = {k: v for k, v in report["model"].items() if k != "ci95"}
    uncertainty = report.get("uncertainty")
    intervals = {"pooled": report["model"].get("ci95", {})}
    intervals.update({name: values.get("ci95", {}) for name, values in report["baselines"].items()})
    return {
        "pooled": model,
        "pooled_ci95": {**uncertainty, "intervals": intervals} if uncertainty is not None else None,
        "pooled_baselines": report["baselines"],
        "beats_baselines": report["beats_baselines"],
        "beats_imaging_features": report.get("beats_imaging_features"),
        "baseline_comparison": report["baseline_comparison"],
    }


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{value:.0f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(summary: Mapping[str, Any]) -> str:
    """``cv.md``: per-fold, pooled and mean +- SD figures of a :func:`run_cross_validation` summary."""
    columns = list(TASK_SCORERS[summary["task"]].columns)
    lines = [
        f"# Cross-validation: {summary['bundle']} ({summary['k']} folds)",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Folds: {summary['folds_source']}; subjects per fold {summary['subjects_per_fold']}. "
        f"The test split was not read. Model selection: {summary['selection']}.",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for record in summary["folds"]:
        lines.append(f"| fold {record['fold']} | " + " | ".join(_cell(record["metrics"].get(c)) for c in columns) + " |")
    intervals = (summary.get("pooled_ci95") or {}).get("intervals", {})

    def pooled_row(label: str, metrics: Mapping[str, Any], ci: Mapping[str, Any]) -> str:
        cells = (_cell(metrics.get(c)) + (f" [{_cell(ci[c][0])}, {_cell(ci[c][1])}]" if c in ci else "") for c in columns)
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(pooled_row("pooled (95% CI)", summary["pooled"], intervals.get("pooled", {})))
    across = summary["across_folds"]
    cells = [
        f"{_cell(across[c]['mean'])} +- {_cell(across[c]['sd'])}" if c in across else "n/a" for c in columns
    ]
    lines.append("| mean +- SD over folds | " + " | ".join(cells) + " |")
    for name, metrics in (summary.get("pooled_baselines") or {}).items():
        lines.append(pooled_row(f"baseline {name}, pooled", metrics, intervals.get(name, {})))
    lines += [
        "",
        "Pooled: the predictions of all folds concatenated and scored once; 95% CI: percentile bootstrap of the "
        "pooled predictions resampling subjects (it leaves out the variation from retraining); SD: sample SD over "
        "folds (ddof 1). Baselines: what each fold's evaluation fitted on that fold's training split, on the same "
        "sessions.",
    ]
    comparison = summary.get("baseline_comparison") or {}
    if comparison.get("baseline") is not None:
        verdict = {True: "yes", False: "**NO: not a result**", None: "undefined"}[summary.get("beats_baselines")]
        difference = comparison.get("difference_ci95")
        lines += [
            "",
            f"Beats its trivial baselines (pooled {comparison['metric']}): {verdict}; model {_cell(comparison['model'])} "
            f"vs {comparison['baseline']} {_cell(comparison['baseline_value'])}"
            + (f", difference 95% CI [{_cell(difference[0])}, {_cell(difference[1])}]" if difference else "")
            + "."
            + (
                f" Beats the imaging-feature baseline: {'yes' if summary['beats_imaging_features'] else 'no'}."
                if summary.get("beats_imaging_features") is not None
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- runs


def _digest(*parts: Any) -> str:
    return sha256_json(parts)


def _bundle_files(bundle: Path) -> tuple[Path, Path, dict[str, Any]]:
    train, evaluate = (bundle.absolute() / "configs" / name for name in ("train.json", "evaluate.json"))
    for path in (train, evaluate):
        if not path.is_file():
            raise CrossValidationError(f"{path}: not found; BUNDLE must be a bundle folder such as bundles/brain_age")
    try:
        config = json.loads(train.read_text())
    except json.JSONDecodeError as error:
        raise CrossValidationError(f"{train}: not valid JSON ({error})") from None
    return train, evaluate, config


def _run_logged(command: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        stream.write(" ".join(command) + "\n\n")
        stream.flush()
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise CrossValidationError(f"{what} failed (exit {result.returncode}): {tail[0].strip()} (full log: {log})")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_cross_validation(
    bundle: str | os.PathLike,
    data_manifest: str | os.PathLike,
    folds: int,
    out_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    python: str = sys.executable,
    command: str | None = None,
    n_resamples: int = 1000,
    inner_validation: float = 0.0,
) -> dict[str, Any]:
    """Train and evaluate ``bundle`` on each fold; write per-fold, pooled and mean +- SD metrics.

    Args:
        bundle: the bundle folder (``configs/train.json`` and ``configs/evaluate.json``).
        data_manifest: the manifest; its folds are used, or made from training + validation (see
            :func:`manifest_folds`). Its ``testing`` list is never read.
        folds: number of folds K.
        out_dir: output folder: ``fold_k/{manifest.json,models/,eval/,train.log,evaluate.log,fold.json}``,
            ``cv.json``, ``cv.md``, ``predictions.csv`` (all folds' tables, with a ``fold`` column).
        overrides: bundle config overrides for every fold (``{"epochs": 1}``); ``{fold}`` in a string value
            becomes the fold number (:func:`overrides_of_fold`); the keys of :data:`RESERVED_OVERRIDES` are set
            per fold and refused here.
        seed: seed of the fold split when the manifest has no folds (the training seed is the bundle's).
        python: interpreter that runs ``-m monai.bundle``.
        command: the command line recorded in the outputs (default: a ``monai-ms cv`` line).
        n_resamples: subject-bootstrap resamples of the pooled metrics' 95% intervals (0: none).
        inner_validation: share of the training folds' subjects held out for early stopping and the
            checkpoint choice (0: the held-out fold is the validation split); see :func:`fold_manifest`.

    Returns:
        the summary written to ``cv.json``: ``folds`` (per fold: ``fold``, sessions, subjects, metrics,
        ``skipped``), the keys of :func:`pooled_summary` (``pooled``, ``pooled_ci95``, ``pooled_baselines``,
        ``beats_baselines``, ``beats_imaging_features``, ``baseline_comparison``), ``across_folds`` (mean,
        SD, n_folds per metric) and the settings.

    Raises:
        CrossValidationError: a bad bundle, a reserved override, a fold's training or evaluation that
            failed (the log is named), or a finished fold in ``out_dir`` made with other settings.
        ManifestError: the manifest cannot be divided into folds (see :func:`manifest_folds`).

    Examples:
        >>> summary = run_cross_validation("bundles/brain_age", "demo_data/v2/manifest.json", 5, "cv/brain_age")  # doctest: +SKIP
        >>> summary["across_folds"]["mae"]["mean"]  # doctest: +SKIP
    """
    import pandas as pd

    bundle, manifest_path, out = Path(bundle), Path(data_manifest), Path(out_dir)
    train_json, evaluate_json, config = _bundle_files(bundle)
    task = config.get("task")
    if task not in TASK_SCORERS:
        raise CrossValidationError(f"{train_json}: task must be one of {', '.join(TASK_SCORERS)}, got {task!r}")
    overrides = json.loads(json.dumps(dict(overrides or {})))  # as stored in the fold records
    reserved = sorted(set(overrides) & set(RESERVED_OVERRIDES))
    if reserved:
        raise CrossValidationError(
            f"--set {reserved[0]}=...: the cv command sets {', '.join(RESERVED_OVERRIDES)} itself for every fold"
        )
    models = (bundle / "models").resolve()
    if out.resolve() == models or models in out.resolve().parents:
        raise CrossValidationError(f"--out {out}: must not be inside {bundle / 'models'} (the bundle's own model)")
    if isinstance(inner_validation, bool) or not isinstance(inner_validation, (int, float)) or not 0 <= inner_validation < 1:
        raise CrossValidationError(f"--inner_validation must be a share in [0, 1), got {inner_validation!r}")
    per_fold, fold_info = manifest_folds(manifest_path, folds, seed)
    metadata_path = bundle / "configs" / "metadata.json"
    version = (_read_record(metadata_path) or {}).get("version")
    config_sha = {p.name: sha256_file(p) for p in (train_json, evaluate_json)}
    # an EDSS fold trains its lesion stage from the sibling lesion_seg bundle's defaults: they are a setting too
    lesion_stage_json = train_json.parents[2] / "lesion_seg" / "configs" / "train.json"
    stage_sha = sha256_file(lesion_stage_json) if task == "edss" and lesion_stage_json.is_file() else None
    if command is None:
        sets = " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items())
        inner = f" --inner_validation {inner_validation:g}" if inner_validation else ""
        command = f"monai-ms cv {bundle} --data_manifest {manifest_path} --folds {folds} --out {out}{inner} {sets}".strip()
    scorer = TASK_SCORERS[task]
    records, tables = [], []
    out.mkdir(parents=True, exist_ok=True)
    for fold in range(folds):
        fold_dir = out / f"fold_{fold}"
        manifest = fold_manifest(
            per_fold, fold, manifest_path.absolute().parent, fold_dir.absolute(), inner_validation, seed
        )
        # what the fold's model depends on, and what its evaluation depends on in addition
        training_settings = {
            "train.json sha256": config_sha["train.json"],
            "overrides": overrides,
            "fold manifest": _digest(manifest),
            "task": task,
            **({"lesion_seg train.json sha256": stage_sha} if stage_sha else {}),
        }
        settings = {**training_settings, "evaluate.json sha256": config_sha["evaluate.json"]}
        record = _read_record(fold_dir / FOLD_RECORD)
        table_path = fold_dir / "eval" / scorer.table
        if record is not None and record.get("settings") == settings and table_path.is_file():
            logger.info(f"fold {fold}: finished earlier with the same settings ({fold_dir / FOLD_RECORD}); skipped")
            tables.append(pd.read_csv(table_path).assign(fold=fold))
            records.append({**record, "skipped": True})
            continue
        if record is not None:
            changed = [k for k in training_settings if (record.get("settings") or {}).get(k) != training_settings[k]]
            if changed:
                raise CrossValidationError(
                    f"{fold_dir / FOLD_RECORD}: fold {fold} was finished with other settings ({', '.join(changed)} "
                    f"differ); use another --out, or delete {fold_dir} to redo it"
                )
            logger.info(f"fold {fold}: evaluate.json changed since the fold was evaluated; evaluating it again")
        fold_manifest_path = fold_dir / "manifest.json"
        write_manifest(manifest, fold_manifest_path, overwrite=True)
        fold_overrides = {
            **overrides_of_fold(overrides, fold),
            "data_manifest": str(fold_manifest_path.absolute()),
            "output_dir": str((fold_dir / "eval").absolute()),
            "ckpt_dir": str((fold_dir / "models").absolute()),
            "cache_dir": str((fold_dir / "cache").absolute()),
        }
        trained = _read_record(fold_dir / TRAINED_RECORD)
        if trained is not None and trained.get("settings") == training_settings and (fold_dir / "models" / "model.pt").is_file():
            logger.info(f"fold {fold}: trained earlier with the same settings; evaluating only")
        else:
            logger.info(
                f"fold {fold}: training on {len(manifest['training'])} sessions, validating on "
                f"{len(manifest['validation'])} (log: {fold_dir / 'train.log'})"
            )
            train_cmd = [python, "-m", "monai.bundle", "run", "training", "--config_file", str(train_json)]
            _run_logged(train_cmd + override_args(fold_overrides), fold_dir / "train.log", f"fold {fold} training")
            write_json({"fold": fold, "settings": training_settings}, fold_dir / TRAINED_RECORD)
        logger.info(f"fold {fold}: evaluating the held-out fold (log: {fold_dir / 'evaluate.log'})")
        configs = f"['{train_json}','{evaluate_json}']"
        eval_cmd = [python, "-m", "monai.bundle", "run", "evaluating", "--config_file", configs]
        eval_overrides = {**fold_overrides, "eval_split": "testing" if inner_validation else "validation"}
        _run_logged(eval_cmd + override_args(eval_overrides), fold_dir / "evaluate.log", f"fold {fold} evaluation")
        table = pd.read_csv(table_path)
        expected = sorted(str(e["session"]) for e in per_fold[fold])
        if "session" in table and sorted(table["session"].astype(str)) != expected:
            raise CrossValidationError(
                f"{table_path}: holds {len(table)} sessions, fold {fold} has {len(expected)}; the evaluation did not "
                "read the held-out fold"
            )
        record = {
            "fold": fold,
            "settings": settings,
            "sessions": len(per_fold[fold]),
            "subjects": len({e["subject"] for e in per_fold[fold]}),
            "training_sessions": len(manifest["training"]),
            "metrics": score_table(task, table),
            "table": str(table_path),
            "metrics_json": str(fold_dir / "eval" / "metrics.json"),
        }
        write_json(record, fold_dir / FOLD_RECORD)
        tables.append(table.assign(fold=fold))
        records.append({**record, "skipped": False})
        logger.info(f"fold {fold}: " + ", ".join(f"{k} {_cell(v)}" for k, v in record["metrics"].items() if k in scorer.columns))

    pooled_table = pd.concat(tables, ignore_index=True)
    subjects = {str(e["session"]): str(e["subject"]) for entries in per_fold for e in entries}
    summary = {
        "bundle": str(bundle),
        "bundle_version": version,
        "task": task,
        "command": command,
        "manifest": str(manifest_path),
        "manifest_sha256": sha256_file(manifest_path),
        "configs_sha256": config_sha,
        "k": folds,
        "folds_source": fold_info["source"],
        "split_seed": fold_info["seed"],
        "sessions_per_fold": fold_info["sessions"],
        "subjects_per_fold": fold_info["subjects"],
        "overrides": overrides,
        "test_split": "not read",
        "selection": INNER_SELECTION_NOTE.format(share=inner_validation) if inner_validation else SELECTION_NOTE,
        "inner_validation": inner_validation,
        "folds": records,
        **pooled_summary(pooled_report(task, pooled_table, subjects, n_resamples=n_resamples)),
        "across_folds": summarize_folds([r["metrics"] for r in records]),
    }
    if summary["beats_baselines"] is False:
        comparison = summary["baseline_comparison"]
        logger.warning(
            f"cross-validation of {bundle}: the model does NOT beat its trivial baseline on the pooled folds "
            f"({comparison['metric']} {_cell(comparison['model'])} vs {comparison['baseline']} "
            f"{_cell(comparison['baseline_value'])}); it is not a result"
        )
    write_csv(pooled_table, out / "predictions.csv")
    write_json(summary, out / "cv.json")
    write_text(markdown_table(summary), out / "cv.md")
    logger.info(f"cross-validation of {bundle}: written to {out / 'cv.json'} and {out / 'cv.md'}")
    return summary


def compare_runs(first: str | Path, second: str | Path, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two cross-validation runs of one task on the same sessions (two designs).

    Both runs' pooled tables (``OUT/predictions.csv``; per scan for lesion_seg) are scored with the task's metric
    function on the same subject-bootstrap resamples (:func:`monai_ms.bundle.compare.compare_tables`), so the
    interval of the difference leaves out the between-subject variation the two runs share: two designs whose own
    intervals overlap can still differ decidedly. Use it to choose a design on cross-validation, never on a test
    split. ``monai-ms compare-eval`` does the same for two evaluations of one split.

    Args:
        first: output folder of ``monai-ms cv`` (``cv.json`` and ``predictions.csv``), e.g. the current default.
        second: another run on the same manifest and sessions, e.g. a variant (``--set``).
        n_resamples: bootstrap resamples.
        seed: resampling seed.

    Returns:
        :func:`~monai_ms.bundle.compare.compare_tables`' dict, with ``"runs"``: ``{"first", "second"}``, each
        ``{"folder", "bundle_version", "overrides"}`` (as :func:`~monai_ms.bundle.compare.compare_evaluations`).

    Raises:
        CrossValidationError: a run folder without its files, two tasks or manifests, or sessions that are not
            the same in both runs.
    """
    import pandas as pd

    from monai_ms.bundle.compare import compare_tables

    runs = []
    for folder in (Path(first), Path(second)):
        summary = _read_record(folder / "cv.json")
        table = folder / "predictions.csv"
        if summary is None or not table.is_file():
            raise CrossValidationError(f"{folder}: not a finished monai-ms cv run (needs cv.json and predictions.csv)")
        runs.append((folder, summary, pd.read_csv(table)))
    (path_a, run_a, table_a), (path_b, run_b, table_b) = runs
    task = run_a.get("task")
    if task != run_b.get("task"):
        raise CrossValidationError(f"{path_b}: task {run_b.get('task')!r}, {path_a} has {task!r}; compare runs of one task")
    if run_a.get("manifest_sha256") != run_b.get("manifest_sha256"):
        raise CrossValidationError(f"{path_b}: made from another manifest than {path_a} (manifest_sha256 differs)")
    if str(task) not in TASK_SCORERS:
        raise CrossValidationError(f"{path_a / 'cv.json'}: task {task!r} is not one of {', '.join(TASK_SCORERS)}")
    sources = (str(path_a / "predictions.csv"), str(path_b / "predictions.csv"))
    result = compare_tables(str(task), table_a, table_b, n_resamples=n_resamples, seed=seed, sources=sources)

    def side(folder: Path, run: Mapping[str, Any]) -> dict[str, Any]:
        return {"folder": str(folder), "bundle_version": run.get("bundle_version"), "overrides": run.get("overrides")}

    return {**result, "runs": {"first": side(path_a, run_a), "second": side(path_b, run_b)}}
