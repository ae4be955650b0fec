"""Paired comparison of two models of one task on the same sessions: the difference and its interval.

Two designs scored on one split (or on one cross-validation's pooled folds) almost always have overlapping
intervals, because both are dominated by the same between-subject variation. Scoring both on **the same**
subject-bootstrap resamples (:func:`~monai_ms.engines.metrics.bootstrap.bootstrap_metrics`) and taking the
interval of their difference leaves that shared variation out: this is how a design variant is chosen on a
validation split or on cross-validation, never on a test split.

- :func:`compare_tables`: two evaluation tables of one task (``predictions.csv`` or ``per_scan.csv``),
  scored with the task's own metric function (:data:`~monai_ms.bundle.cross_validation.TASK_SCORERS`), so the
  two values are exactly those of the two ``metrics.json`` files;
- :func:`compare_evaluations`: two ``run evaluating`` output folders of the same split of the same manifest
  (``monai-ms compare-eval``); :func:`~monai_ms.bundle.cross_validation.compare_runs` does the same for two
  ``monai-ms cv`` runs (``monai-ms cv-compare``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_ms.bundle.cross_validation import TASK_SCORERS, CrossValidationError, score_table
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES, bootstrap_metrics

__all__ = ["ComparisonError", "compare_tables", "compare_evaluations", "detect_task", "comparison_line"]

logger = logging.getLogger(__name__)


class ComparisonError(CrossValidationError):
    """Two results that cannot be paired; the message is one line naming the file and the rule."""


def compare_tables(
    task: str,
    first: Any,
    second: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    sources: tuple[str, str] = ("first", "second"),
) -> dict[str, Any]:
    """The second table's metric minus the first's, with a paired 95% subject-bootstrap interval.

    Args:
        task: a key of :data:`~monai_ms.bundle.cross_validation.TASK_SCORERS` (``brain_age``, ``edss``, ``sex``,
            ``lesion_seg``).
        first: ``pandas.DataFrame``, one row per session (``session``, ``subject`` and the task's columns).
        second: the same sessions scored by the other model.
        n_resamples: bootstrap resamples (each draws subjects with replacement, all their sessions).
        seed: resampling seed.
        sources: names of the two tables for the error messages (e.g. their paths).

    Returns:
        ``{"task", "metric", "lower_is_better", "first": value, "second": value, "difference",
        "difference_ci95": [low, high], "decided", "ci95": {"first": [..], "second": [..]}, "n_sessions",
        "n_subjects", "resamples", "seed", "undefined_resamples"}`` (lesion_seg also ``"n_sessions_with_lesions"``;
        ``undefined_resamples``: resamples left out of the interval, e.g. with no scan with lesions). ``decided`` is
        ``"second better"`` or ``"first better"`` when the interval excludes 0, else ``"undecided"``.

    Raises:
        ComparisonError: a missing column, a session listed twice, sessions not the same in both tables, a session
            given two subjects, or (lesion_seg) a scan with reference lesions in one table only.

    Examples:
        >>> import pandas as pd
        >>> a = pd.DataFrame({"session": ["s1", "s2", "s3"], "subject": ["P1", "P2", "P3"], "age": [30.0, 40.0, 50.0],
        ...                   "age_pred": [36.0, 34.0, 56.0]})
        >>> b = a.assign(age_pred=[31.0, 41.0, 49.0])
        >>> compare_tables("brain_age", a, b, n_resamples=100)["difference"]
        -5.0
    """
    if task not in TASK_SCORERS:
        raise ComparisonError(f"task must be one of {', '.join(TASK_SCORERS)}, got {task!r}")
    scorer = TASK_SCORERS[task]
    # lesion_seg: the scans with reference lesions, on which Dice is defined, must be the same on both sides
    needed = ["session", "subject", scorer.prediction or "volume_true_ml"]
    for name, table in zip(sources, (first, second), strict=True):
        missing = [c for c in needed if c not in table]
        if missing:
            raise ComparisonError(f"{name}: column {missing[0]!r} missing")
    for name, table in zip(sources, (first, second), strict=True):
        twice = table["session"].astype(str)[table["session"].astype(str).duplicated()]
        if len(twice):
            raise ComparisonError(f"{name}: session {twice.iloc[0]} is listed twice; one row per session")
    sessions_a, sessions_b = (set(t["session"].astype(str)) for t in (first, second))
    for name, other, extra in ((sources[0], sources[1], sessions_a - sessions_b), (sources[1], sources[0], sessions_b - sessions_a)):
        if extra:
            raise ComparisonError(f"{name}: session {sorted(extra)[0]} is not in {other}; the two results must hold the same sessions")
    # the first table in the second's row order: both are indexed by the same resamples
    second = second.reset_index(drop=True)
    first = first.set_index(first["session"].astype(str)).loc[second["session"].astype(str)].reset_index(drop=True)
    mismatch = first["subject"].astype(str).to_numpy() != second["subject"].astype(str).to_numpy()
    if mismatch.any():
        session = second["session"].astype(str)[int(np.argmax(mismatch))]
        raise ComparisonError(f"{sources[1]}: session {session} has another subject than in {sources[0]}")
    if task == "lesion_seg":  # Dice is defined on the scans with lesions: both sides must average the same scans
        lesioned = [t["volume_true_ml"].to_numpy(float) > 0 for t in (first, second)]
        if (lesioned[0] != lesioned[1]).any():
            session = second["session"].astype(str)[int(np.argmax(lesioned[0] != lesioned[1]))]
            raise ComparisonError(
                f"{sources[1]}: session {session} has a reference lesion in one table and none in the other "
                "(volume_true_ml); the two evaluations did not read the same masks"
            )
    subjects = second["subject"].astype(str).tolist()

    def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
        return {"first": score_table(task, first.iloc[index]), "second": score_table(task, second.iloc[index])}

    everything = compute(np.arange(len(second)))
    value_a, value_b = (float(everything[k][scorer.metric]) for k in ("first", "second"))
    result: dict[str, Any] = {
        "task": task,
        "metric": scorer.metric,
        "lower_is_better": scorer.lower_is_better,
        "first": value_a,
        "second": value_b,
        "difference": value_b - value_a,
        "difference_ci95": [math.nan, math.nan],
        "decided": "undecided",
        "ci95": {},
        "n_sessions": len(second),
        "n_subjects": len(set(subjects)),
        "resamples": n_resamples,
        "seed": seed,
    }
    if "n_scans_with_lesions" in everything["second"]:  # lesion_seg: Dice is defined on the scans with lesions only
        result["n_sessions_with_lesions"] = int(everything["second"]["n_scans_with_lesions"])
    if n_resamples > 0:
        uncertainty = bootstrap_metrics(compute, subjects, n_resamples, seed, difference=(scorer.metric, "second", "first"))
        low, high = uncertainty["difference"]["interval"]
        result["difference_ci95"] = [low, high]
        result["ci95"] = {k: uncertainty["intervals"][k].get(scorer.metric) for k in ("first", "second")}
        # resamples where the metric is undefined (e.g. no scan with lesions drawn) are left out of the interval
        result["undefined_resamples"] = int(uncertainty.get("undefined_resamples", {}).get("second", {}).get(scorer.metric, 0))
        sign = -1.0 if scorer.lower_is_better else 1.0
        if min(sign * low, sign * high) > 0:
            result["decided"] = "second better"
        elif max(sign * low, sign * high) < 0:
            result["decided"] = "first better"
    return result


def detect_task(folder: str | Path) -> str:
    """The task of an evaluation folder, from its table: ``per_scan.csv`` is lesion_seg, ``predictions.csv`` the
    task whose prediction column it holds (``age_pred``, ``prediction``, ``p_male``).

    Raises:
        ComparisonError: no table of any task in the folder.
    """
    folder = Path(folder)
    for task, scorer in TASK_SCORERS.items():
        table = folder / scorer.table
        if not table.is_file():
            continue
        if scorer.prediction is None:
            return task
        with table.open() as handle:
            if scorer.prediction in handle.readline().strip().split(","):
                return task
    tables = sorted({s.table for s in TASK_SCORERS.values()})
    raise ComparisonError(f"{folder}: no evaluation table ({' or '.join(tables)} with a task's prediction column)")


def _evaluation(folder: Path) -> tuple[str, dict[str, Any], Any]:
    import pandas as pd

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ComparisonError(f"{folder}: not a finished evaluation (needs metrics.json and its table)") from None
    task = detect_task(folder)
    provenance = (metrics.get("provenance") if isinstance(metrics, dict) else None) or {}
    if not provenance.get("manifest_sha256") or not provenance.get("split"):
        raise ComparisonError(
            f"{folder / 'metrics.json'}: no provenance (manifest_sha256 and split); evaluate again to compare it"
        )
    try:
        table = pd.read_csv(folder / TASK_SCORERS[task].table)
    except (OSError, ValueError) as error:  # pandas' parser errors are ValueErrors
        raise ComparisonError(f"{folder / TASK_SCORERS[task].table}: cannot read the table ({error})") from None
    return task, metrics, table


def compare_evaluations(
    first: str | Path, second: str | Path, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison of two evaluations (``run evaluating`` output folders) of the same split.

    The two tables are scored with the task's metric function on the same subject-bootstrap resamples
    (:func:`compare_tables`), so ``first``/``second`` equal the two ``metrics.json`` values. For lesion_seg the
    metric is the mean Dice of the scans with lesions, resampled by subject over all scans, as in
    ``metrics.json``.

    Args:
        first: an evaluation output folder (``metrics.json`` and ``predictions.csv`` or ``per_scan.csv``),
            e.g. the current default's on a validation split.
        second: another model's evaluation of the same split of the same manifest, e.g. a design variant's.
        n_resamples: bootstrap resamples.
        seed: resampling seed.

    Returns:
        :func:`compare_tables`' dict, with ``"split"``, ``"manifest_sha256"`` and, per side, ``"runs"``: the
        folder, bundle version, checkpoint SHA-256 and command-line overrides.

    Raises:
        ComparisonError: a folder that is not a finished evaluation, two tasks, two manifests or two splits, or
            tables that do not hold the same sessions.
    """
    paths = (Path(first), Path(second))
    (task_a, metrics_a, table_a), (task_b, metrics_b, table_b) = (_evaluation(p) for p in paths)
    prov_a, prov_b = metrics_a["provenance"], metrics_b["provenance"]
    if task_a != task_b:
        raise ComparisonError(f"{paths[1]}: a {task_b} evaluation, {paths[0]} is {task_a}; compare one task")
    if prov_a["manifest_sha256"] != prov_b["manifest_sha256"]:
        raise ComparisonError(f"{paths[1]}: evaluated on another manifest than {paths[0]} (manifest_sha256 differs)")
    if prov_a["split"] != prov_b["split"]:
        raise ComparisonError(
            f"{paths[1]}: split {prov_b['split']!r}, {paths[0]} has {prov_a['split']!r}; compare evaluations of one split"
        )
    if prov_a.get("fold") != prov_b.get("fold"):
        raise ComparisonError(
            f"{paths[1]}: fold {prov_b.get('fold')!r}, {paths[0]} has fold {prov_a.get('fold')!r}; compare evaluations of one fold"
        )
    if prov_a["split"] == "testing":
        logger.warning(
            "comparing two evaluations of the test split: choose a design on a validation split or by cross-validation, "
            "and score the test split once, after the choice"
        )
    sources = tuple(str(p / TASK_SCORERS[task_a].table) for p in paths)
    result = compare_tables(task_a, table_a, table_b, n_resamples, seed, sources=(sources[0], sources[1]))

    def run(folder: Path, provenance: Mapping[str, Any]) -> dict[str, Any]:
        keys = ("bundle", "bundle_version", "checkpoint_sha256", "overrides")
        return {"folder": str(folder), **{k: provenance.get(k) for k in keys}}

    return {
        **result,
        "split": prov_a["split"],
        "manifest_sha256": prov_a["manifest_sha256"],
        "runs": {"first": run(paths[0], prov_a), "second": run(paths[1], prov_b)},
    }


def comparison_line(result: Mapping[str, Any]) -> str:
    """One line: the two values, the difference, its interval and the verdict (both ``cv-compare`` and ``compare-eval``)."""
    low, high = result["difference_ci95"]
    where = f" on the {result['split']} split" if result.get("split") else ""
    scored = f" ({result['n_sessions_with_lesions']} with lesions)" if "n_sessions_with_lesions" in result else ""
    return (
        f"{result['task']} {result['metric']} ({'lower' if result['lower_is_better'] else 'higher'} is better){where}, "
        f"{result['n_sessions']} sessions{scored} of {result['n_subjects']} subjects: "
        f"first {result['first']:.4g}, second {result['second']:.4g}; "
        f"second minus first {result['difference']:+.4g} [{low:+.4g}, {high:+.4g}] (paired 95% subject bootstrap): "
        f"{result['decided']}"
    )
