"""Subject-level, stratified training / validation / testing split (and cross-validation folds).

Sessions of one patient always land in the same split: entries are first grouped by ``subject``, each
subject gets one stratum (sex, and the EDSS bin of the subject's mean EDSS), and scikit-learn splits the
subjects (``train_test_split`` / ``StratifiedKFold``). When a stratum is too small to be split, the
stratification is coarsened (sex only, then none) and the returned split info says so.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_ms.data.fields import SPLITS, normalise_sex
from monai_ms.data.manifest import ManifestError

__all__ = ["split_entries", "subject_folds", "STRATIFY_KEYS", "DEFAULT_EDSS_BINS"]

logger = logging.getLogger(__name__)

STRATIFY_KEYS = ("sex", "edss")
# mild (< 2.5), moderate (2.5-4), walking impaired (4.5-6), walking aid or worse (>= 6.5)
DEFAULT_EDSS_BINS = (0.0, 2.5, 4.5, 6.5, 10.01)
MISSING = "na"


class _Infeasible(Exception):
    """A stratification level that cannot be used on these subjects; the message says why."""


def split_entries(
    entries: Sequence[Mapping[str, Any]],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    folds: int | None = None,
    seed: int = 0,
    stratify: Sequence[str] = ("sex", "edss"),
    edss_bins: Sequence[float] = DEFAULT_EDSS_BINS,
) -> dict[str, Any]:
    """Split scan sessions into training / validation / testing by subject, stratified, from a seed.

    Fractions are of subjects (not sessions); a split's size is ``round(fraction * subjects)``, at least 1
    for a non-zero fraction. With ``folds=K`` the non-test subjects are divided into K stratified folds:
    every non-test entry gets ``"fold": k``, ``folds`` lists each fold's session ids, and
    ``training``/``validation`` hold fold 0 (validation = fold 0); ``val_fraction`` is then not used.

    Args:
        entries: manifest entries; each needs ``subject`` and ``session``. Any existing ``fold`` is dropped.
        val_fraction: share of subjects for validation, in [0, 1).
        test_fraction: share of subjects for testing, in [0, 1); 0 means no testing split.
        folds: number of cross-validation folds (>= 2), or None.
        seed: random seed; the same entries and seed give the same split whatever the entry order.
        stratify: keys to stratify by, a subset of ``("sex", "edss")``; empty for none.
        edss_bins: EDSS bin edges for stratification (``np.digitize``; the subject's mean EDSS).

    Returns:
        dict with ``training``, ``validation``, ``testing`` (entry copies in input order), ``folds``
        (with ``folds``) and ``split``: seed, fractions, folds, ``stratify`` (asked),
        ``stratified_by`` (used), ``note`` (why it was coarsened, or None), subject and session counts
        and per-split sex / EDSS-bin counts of subjects.

    Raises:
        ManifestError: entries without subject/session; fractions not in [0, 1) or summing to >= 1;
            fractions that leave training empty; fewer than 2 folds or more folds than subjects.

    Examples:
        >>> split = split_entries(entries, val_fraction=0.2, test_fraction=0.2, seed=1)  # doctest: +SKIP
        >>> split["split"]["stratified_by"]  # doctest: +SKIP
        ['sex', 'edss']
    """
    _check_arguments(val_fraction, test_fraction, folds, stratify, edss_bins)
    entries = [{k: v for k, v in entry.items() if k != "fold"} for entry in _checked_entries(entries)]
    by_subject: dict[str, list[int]] = defaultdict(list)
    for position, entry in enumerate(entries):
        by_subject[entry["subject"]].append(position)
    subjects = sorted(by_subject)  # independent of entry order
    n_subjects = len(subjects)
    strata = {key: _subject_strata(key, subjects, by_subject, entries, edss_bins) for key in STRATIFY_KEYS}
    n_test = _count(test_fraction, n_subjects)
    n_val = 0 if folds else _count(val_fraction, n_subjects)
    if folds is not None and n_subjects - n_test < folds:
        raise ManifestError(
            f"{folds} folds need at least {folds} non-test subjects; there are {n_subjects} subjects"
            + (f", {n_test} of them for testing (test fraction {test_fraction:g})" if n_test else "")
        )
    if n_subjects - n_test - n_val < 1:
        raise ManifestError(
            f"cannot split {n_subjects} subjects with validation fraction {val_fraction:g} and test fraction "
            f"{test_fraction:g}: validation {n_val} + testing {n_test} subjects leave training empty"
        )

    levels = [tuple(k for k in STRATIFY_KEYS if k in stratify)]
    if "sex" in stratify and len(levels[0]) > 1:
        levels.append(("sex",))
    levels.append(())
    levels = list(dict.fromkeys(levels))
    notes = []
    for index, level in enumerate(levels):
        try:
            assignment = _assign(subjects, strata, level, n_test, n_val, folds, seed)
            break
        except _Infeasible as reason:  # the last level (no stratification) always works
            fallback = "+".join(levels[index + 1]) or "no stratification"
            notes.append(f"stratifying by {'+'.join(level)} is not possible ({reason}); using {fallback}")
            logger.info(notes[-1])
    # assignment: subject -> (split, fold or None)
    result: dict[str, Any] = {split: [] for split in SPLITS}
    fold_lists: list[list[str]] = [[] for _ in range(folds or 0)]
    for entry in entries:
        split, fold = assignment[entry["subject"]]
        if fold is not None:
            entry["fold"] = fold
            fold_lists[fold].append(entry["session"])
        result[split].append(entry)
    if folds:
        result["folds"] = fold_lists
    result["split"] = {
        "seed": seed,
        "val_fraction": None if folds else val_fraction,
        "test_fraction": test_fraction,
        "folds": folds,
        "stratify": list(levels[0]),
        "stratified_by": list(level),
        "edss_bins": list(edss_bins),
        "note": "; ".join(notes) or None,
        "subjects": {
            split: len({e["subject"] for e in result[split]}) for split in SPLITS
        },
        "sessions": {split: len(result[split]) for split in SPLITS},
        "strata": {
            split: {
                key: dict(sorted(Counter(strata[key][s] for s, (sp, _) in assignment.items() if sp == split).items()))
                for key in STRATIFY_KEYS
            }
            for split in SPLITS
        },
    }
    return result


def _check_arguments(
    val_fraction: float, test_fraction: float, folds: int | None, stratify: Sequence[str], edss_bins: Sequence[float]
) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ManifestError(f"{name} must be a number in [0, 1), got {value!r}")
    if folds is None and val_fraction + test_fraction >= 1:
        raise ManifestError(
            f"val_fraction + test_fraction must be < 1 (something must be left for training), "
            f"got {val_fraction:g} + {test_fraction:g} = {val_fraction + test_fraction:g}"
        )
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ManifestError(f"folds must be an integer >= 2 (or None for no folds), got {folds!r}")
    unknown = [key for key in stratify if key not in STRATIFY_KEYS]
    if isinstance(stratify, str) or unknown:
        raise ManifestError(f"stratify must be a subset of {STRATIFY_KEYS}, got {stratify!r}")
    if len(edss_bins) < 2 or any(b <= a for a, b in zip(edss_bins, edss_bins[1:])):
        raise ManifestError(f"edss_bins must be at least 2 increasing edges, got {tuple(edss_bins)}")


def _checked_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    problems = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"entry {index}: must be an object, got {entry!r}")
            continue
        for key in ("subject", "session"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                problems.append(
                    f"entry {index} (session {entry.get('session')}): "
                    f"{key} must be a non-empty string, got {entry.get(key)!r}"
                )
    if problems:
        raise ManifestError("cannot split by subject:\n" + "\n".join(problems))
    if not entries:
        raise ManifestError("cannot split: no entries")
    return list(entries)


def _count(fraction: float, n: int) -> int:
    return 0 if fraction == 0 else max(1, math.floor(fraction * n + 0.5))


def _subject_strata(
    key: str,
    subjects: Sequence[str],
    by_subject: Mapping[str, list[int]],
    entries: Sequence[Mapping[str, Any]],
    edss_bins: Sequence[float],
) -> dict[str, str]:
    """One label per subject: most common sex of its sessions, or the bin of its mean EDSS ("na" if none)."""
    labels = {}
    for subject in subjects:
        sessions = [entries[i] for i in by_subject[subject]]
        if key == "sex":
            sexes = Counter()
            for entry in sessions:
                try:
                    sexes[normalise_sex(entry.get("sex"))] += 1
                except ValueError:
                    pass
            labels[subject] = sexes.most_common(1)[0][0] if sexes else MISSING
        else:
            values = [
                float(e["edss"])
                for e in sessions
                if isinstance(e.get("edss"), (int, float)) and not isinstance(e.get("edss"), bool)
            ]
            index = int(np.digitize(np.mean(values), edss_bins)) if values else 0
            labels[subject] = (
                f"[{edss_bins[index - 1]:g}, {edss_bins[index]:g})" if 0 < index < len(edss_bins) else MISSING
            )
    return labels


def _labels(subjects: Sequence[str], strata: Mapping[str, Mapping[str, str]], level: Sequence[str]) -> list[str] | None:
    if not level:
        return None
    return ["|".join(strata[key][s] for key in level) for s in subjects]


def _pick(
    subjects: list[str], labels: list[str] | None, n_pick: int, seed: int, what: str
) -> tuple[list[str], list[str]]:
    """(rest, picked): ``n_pick`` subjects drawn at random, stratified by ``labels`` if given."""
    from sklearn.model_selection import train_test_split

    if n_pick == 0:
        return subjects, []
    if labels is not None:
        counts = Counter(labels)
        rarest, n_rarest = min(counts.items(), key=lambda item: (item[1], item[0]))
        if n_rarest < 2:
            raise _Infeasible(f"stratum {rarest} has {n_rarest} subject; each needs at least 2 to be split")
        if n_pick < len(counts) or len(subjects) - n_pick < len(counts):
            raise _Infeasible(
                f"{len(counts)} strata do not fit into {n_pick} {what} subjects and {len(subjects) - n_pick} others"
            )
    rest, picked = train_test_split(subjects, test_size=n_pick, stratify=labels, random_state=seed, shuffle=True)
    return list(rest), list(picked)


def _assign(
    subjects: list[str],
    strata: Mapping[str, Mapping[str, str]],
    level: Sequence[str],
    n_test: int,
    n_val: int,
    folds: int | None,
    seed: int,
) -> dict[str, tuple[str, int | None]]:
    rest, test = _pick(subjects, _labels(subjects, strata, level), n_test, seed, "testing")
    assignment: dict[str, tuple[str, int | None]] = {s: ("testing", None) for s in test}
    rest = sorted(rest)
    if folds:
        from sklearn.model_selection import KFold, StratifiedKFold

        labels = _labels(rest, strata, level)
        if labels is None:
            splitter = KFold(n_splits=folds, shuffle=True, random_state=seed).split(rest)
        else:
            rarest, n_rarest = min(Counter(labels).items(), key=lambda item: (item[1], item[0]))
            if n_rarest < folds:
                raise _Infeasible(f"stratum {rarest} has {n_rarest} non-test subjects, fewer than the {folds} folds")
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(rest, labels)
        for fold, (_, members) in enumerate(splitter):
            for i in members:
                assignment[rest[i]] = ("validation" if fold == 0 else "training", fold)
        return assignment
    train, val = _pick(rest, _labels(rest, strata, level), n_val, seed, "validation")
    assignment.update({s: ("validation", None) for s in val})
    assignment.update({s: ("training", None) for s in train})
    return assignment


def subject_folds(
    entries: Sequence[Mapping[str, Any]], labels: Sequence[int] | None = None, max_splits: int = 5
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Inner cross-validation folds of a training split, grouped by subject (stratified by class if given).

    A patient's sessions are never on both sides of a fold, so a penalty is not chosen for how well a
    model recognises a subject it has already seen. ``GroupKFold`` over subjects for regression;
    ``StratifiedGroupKFold`` (no shuffling, so deterministic) for classification, with as many splits as
    the rarer class has subjects (at most ``max_splits``) and fewer when a fold would lack a class.
    An entry without ``subject`` counts as a subject of its own (with a warning).

    Args:
        entries: training entries, each with ``subject``.
        labels: class of each entry (0/1), or None (regression).
        max_splits: upper bound on the number of folds.

    Returns:
        ``(splits, description)``: ``(train indices, test indices)`` per fold, usable as the ``cv`` of
        scikit-learn's searches, and e.g. ``"GroupKFold(5) over 42 subjects"``.

    Raises:
        ValueError: fewer than 2 subjects, or (``labels``) fewer than 2 subjects of a class.

    Examples:
        >>> entries = [{"subject": s} for s in "aabbccdd"]
        >>> splits, text = subject_folds(entries, max_splits=2)
        >>> text
        'GroupKFold(2) over 4 subjects'
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    missing = {i for i, e in enumerate(entries) if not str(e.get("subject") or "").strip()}
    if missing:
        logger.warning(f"{len(missing)} training entries have no subject; each counts as a subject of its own in the inner CV")
    groups = np.array([str(e.get("subject")) if i not in missing else f"#entry{i}" for i, e in enumerate(entries)])
    n_subjects = len(np.unique(groups))
    if n_subjects < 2:
        raise ValueError(f"the inner cross-validation needs at least 2 subjects in the training split, got {n_subjects}")
    index = np.arange(len(groups))
    if labels is None:
        n_splits = min(max_splits, n_subjects)
        return list(GroupKFold(n_splits=n_splits).split(index, groups=groups)), f"GroupKFold({n_splits}) over {n_subjects} subjects"
    y = np.asarray(labels, dtype=int)
    per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
    if min(per_class) < 2:
        raise ValueError(f"the training split needs at least 2 subjects of each class for the inner cross-validation, got {per_class}")
    for n_splits in range(min(max_splits, min(per_class)), 1, -1):
        splits = list(StratifiedGroupKFold(n_splits=n_splits).split(index, y, groups=groups))
        if all(len(np.unique(y[train])) == 2 and len(np.unique(y[test])) == 2 for train, test in splits):
            return splits, f"StratifiedGroupKFold({n_splits}) over {n_subjects} subjects"
    raise ValueError(f"no grouped split of the training split's {per_class} subjects per class puts both classes in every fold")
