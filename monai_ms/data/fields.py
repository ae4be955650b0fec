"""The fields of a manifest entry, defined once: keys, value ranges, the sex codebook and the value rules.

Everything that reads, writes, checks or encodes an entry's fields takes them from here: the manifest
builders and its JSON schema (``manifest.py``), validation and splits, the transforms (sex as 0/1 for the
networks), the exported MONAI-only inference config and the engines (baselines, labels). The older homes
(``monai_ms.data.manifest``, ``monai_ms.data.transforms``) re-export these names, so imports from there
keep working.

An entry is one scan session::

    {"subject": "P01", "session": "sub-01-01", "t1": "T1/sub-01-01_T1.nii.gz", "t2": "T2/sub-01-01_T2.nii.gz",
     "lesion": "masks/sub-01-01_lesion.nii.gz", "age": 32.0, "sex": "F", "edss": 2.0, "scanner": "1.5T"}

This module imports no other monai_ms module (numpy only), so any module can use it without an import cycle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "SPLITS",
    "IMAGE_KEYS",
    "MODALITY_KEYS",
    "MODALITY_NAMES",
    "DEFAULT_MODALITIES",
    "REQUIRED_KEYS",
    "TASK_KEYS",
    "task_keys",
    "check_modalities",
    "ENTRY_KEY_ORDER",
    "AGE_RANGE",
    "AGE_RULE",
    "EDSS_RANGE",
    "EDSS_STEP",
    "EDSS_RULE",
    "SEX_VALUES",
    "SEX_CLASSES",
    "SEX_CODES",
    "SEX_SPELLING_CODES",
    "SEX_CONFIG_CODES",
    "SEX_PATTERN",
    "MISSING_TOKENS",
    "check_age",
    "check_edss",
    "normalise_sex",
    "parse_sex",
    "is_missing",
    "show_value",
]

# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
"""The manifest's top-level lists of entries (MONAI decathlon datalist keys)."""

MODALITY_KEYS: tuple[str, ...] = ("t1", "t2", "flair", "pd", "t1ce")
"""The intensity images an entry may hold, reference grid (T1) first: T1-, T2-, FLAIR-, proton-density- and
contrast-enhanced T1-weighted. Each is resampled onto the T1 grid; ``lesion`` and ``tissue`` are label maps on
the T1 grid."""

MODALITY_NAMES: dict[str, str] = {"t1": "T1", "t2": "T2", "flair": "FLAIR", "pd": "PD", "t1ce": "contrast-enhanced T1"}
"""How messages and docs name each modality key."""

DEFAULT_MODALITIES: tuple[str, ...] = ("t1", "t2")
"""The modalities a bundle uses when its ``modalities`` setting is not changed (T1 + T2; brain_age and sex: T1)."""

IMAGE_KEYS: tuple[str, ...] = (*MODALITY_KEYS, "lesion", "tissue")
"""Entry keys holding image paths (relative to the manifest's folder, or absolute)."""

REQUIRED_KEYS: tuple[str, ...] = ("subject", "session", "t1")
"""Keys every entry carries, whatever the task."""

# keys an entry must carry for a task; t2/lesion present in an entry are checked whatever the task
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "edss": ("t1", "t2", "age", "sex", "edss"),
    "lesion_seg": ("t1", "t2", "lesion"),
    "brain_age": ("t1", "age"),
    "sex": ("t1", "sex"),
    # inference on new scans: the network inputs only, no label
    "edss_inference": ("t1", "t2", "age", "sex"),
    "lesion_seg_inference": ("t1", "t2"),
    "brain_age_inference": ("t1",),
    "sex_inference": ("t1",),
}



def check_modalities(modalities: Any) -> tuple[str, ...]:
    """Return ``modalities`` as a tuple of known modality keys, T1 first (the reference grid).

    Args:
        modalities: a list such as ``["t1", "flair"]`` (a bundle's ``modalities`` setting).

    Raises:
        ValueError: not a non-empty list of distinct keys of :data:`MODALITY_KEYS` starting with ``t1``.

    Examples:
        >>> check_modalities(["t1", "flair"])
        ('t1', 'flair')
    """
    if isinstance(modalities, str) or not isinstance(modalities, (list, tuple)) or not modalities:
        raise ValueError(f"modalities must be a non-empty list such as ['t1', 'flair'], got {modalities!r}")
    unknown = [m for m in modalities if m not in MODALITY_KEYS]
    if unknown:
        raise ValueError(f"modalities must be among {', '.join(MODALITY_KEYS)}, got {', '.join(map(repr, unknown))}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct, got {list(modalities)}")
    if modalities[0] != "t1":
        raise ValueError(f"modalities must start with t1 (the reference grid the others are resampled onto), got {list(modalities)}")
    return tuple(modalities)


def task_keys(task: str | None, modalities: Any = None) -> tuple[str, ...]:
    """The keys every entry needs for ``task`` when its bundle reads ``modalities``.

    Args:
        task: a key of :data:`TASK_KEYS`, or None (only :data:`REQUIRED_KEYS`).
        modalities: the bundle's ``modalities`` (:func:`check_modalities`); None: the task's default images.

    Returns:
        :data:`REQUIRED_KEYS` plus the task's keys, its image keys replaced by ``modalities``.

    Raises:
        ValueError: an unknown task, or bad ``modalities``.

    Examples:
        >>> task_keys("lesion_seg", ["t1", "flair"])
        ('subject', 'session', 't1', 'flair', 'lesion')
    """
    if task is None:
        return REQUIRED_KEYS
    if task not in TASK_KEYS:
        raise ValueError(f"task must be one of {', '.join(TASK_KEYS)}, got {task!r}")
    keys = TASK_KEYS[task]
    if modalities is not None:
        chosen = check_modalities(modalities)
        keys = chosen + tuple(k for k in keys if k not in MODALITY_KEYS)
    return tuple(dict.fromkeys((*REQUIRED_KEYS, *keys)))


ENTRY_KEY_ORDER: tuple[str, ...] = ("subject", "session", *IMAGE_KEYS, "age", "sex", "edss", "scanner", "scan_date", "fold")
"""The order in which a written entry lists its keys (unknown keys follow)."""

# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

AGE_RANGE: tuple[float, float] = (0.0, 120.0)
AGE_RULE = f"a number of years in [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}]"
EDSS_RANGE: tuple[float, float] = (0.0, 10.0)
EDSS_STEP = 0.5
EDSS_RULE = f"in [{EDSS_RANGE[0]:g}, {EDSS_RANGE[1]:g}] in steps of {EDSS_STEP:g}"

# The sex codebook. Accepted spellings (case-insensitive, surrounding spaces ignored) -> the stored value.
SEX_VALUES: dict[str, str] = {"f": "F", "female": "F", "m": "M", "male": "M"}
SEX_CLASSES: tuple[str, str] = ("F", "M")
"""Stored values by class index: the networks' 0/1 encoding (1 = male), and the sex bundle's class names."""
SEX_CODES: dict[str, float] = {name: float(index) for index, name in enumerate(SEX_CLASSES)}
"""Stored value -> the 0/1 code a network sees (``{"F": 0.0, "M": 1.0}``)."""
SEX_SPELLING_CODES: dict[str, float] = {spelling: SEX_CODES[value] for spelling, value in SEX_VALUES.items()}
"""Accepted spelling (lower case) -> code."""
SEX_CONFIG_CODES: dict[str, float] = {**SEX_SPELLING_CODES, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}
"""``str(value).strip().lower()`` -> code for every value :func:`parse_sex` accepts (0/1 numbers as text):
the lookup table of the exported MONAI-only inference config, which cannot import ``monai_ms``."""
SEX_PATTERN = "^({})$".format(
    "|".join(
        "".join(f"[{c.upper()}{c}]" for c in spelling)
        for spelling in [s for s in SEX_VALUES if len(s) == 1] + [s for s in SEX_VALUES if len(s) > 1]
    )
)
"""The accepted spellings as a JSON-schema ``pattern`` (letters, then words; any case)."""

# table cells that mean "not recorded" (BIDS uses n/a)
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null"})


# ---------------------------------------------------------------------------------------------
# value rules (shared by build, validation, split, transforms and the engines)
# ---------------------------------------------------------------------------------------------


def show_value(value: Any) -> str:
    """A value as an error message shows it: numbers plainly (``2.5``, ``3``), anything else by ``repr``."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _as_number(value: Any, name: str, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = " (text)" if isinstance(value, str) else "" if value is None else f" (a {type(value).__name__})"
        raise ValueError(f"{name} must be {rule}, got {show_value(value)}{kind}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {rule}, got {value}")
    return value


def check_age(value: Any, name: str = "age") -> float:
    """Return ``value`` as a float age in years, or raise if it is not a plausible age.

    Args:
        value: a JSON number (``int`` or ``float``; strings are refused: the manifest stores numbers).
        name: the field name used in the message (e.g. the CSV column).

    Returns:
        the age as ``float``.

    Raises:
        ValueError: not a finite number in [0, 120].

    Examples:
        >>> check_age(32)
        32.0
    """
    age = _as_number(value, name, AGE_RULE)
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise ValueError(f"{name} must be {AGE_RULE}, got {show_value(age)}")
    return age


def check_edss(value: Any, name: str = "edss") -> float:
    """Return ``value`` as a float EDSS score, or raise if it is not one.

    Args:
        value: a JSON number.
        name: the field name used in the message.

    Returns:
        the EDSS as ``float``.

    Raises:
        ValueError: not a number in [0, 10] in steps of 0.5.

    Examples:
        >>> check_edss(3.5)
        3.5
    """
    edss = _as_number(value, name, f"a number {EDSS_RULE}")
    if not (EDSS_RANGE[0] <= edss <= EDSS_RANGE[1] and abs(edss / EDSS_STEP - round(edss / EDSS_STEP)) < 1e-6):
        raise ValueError(f"{name} must be {EDSS_RULE}, got {show_value(edss)}")
    return edss


def normalise_sex(value: Any, name: str = "sex") -> str:
    """Return ``"F"`` or ``"M"`` for F/M/female/male in any case.

    Args:
        value: the recorded sex.
        name: the field name used in the message.

    Returns:
        ``"F"`` or ``"M"``.

    Raises:
        ValueError: anything else.

    Examples:
        >>> normalise_sex("Female")
        'F'
    """
    if isinstance(value, str) and value.strip().lower() in SEX_VALUES:
        return SEX_VALUES[value.strip().lower()]
    raise ValueError(f"{name} must be one of F, M, female, male (any case), got {show_value(value)}")


def parse_sex(value: Any) -> float:
    """Encode sex as 1.0 for male and 0.0 for female.

    Args:
        value: ``F``/``M``/``female``/``male`` in any case (surrounding spaces ignored), or 0/1.

    Raises:
        ValueError: any other value; the message names the accepted spellings and the value.

    Examples:
        >>> parse_sex(" Male ")
        1.0
    """
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (0.0, 1.0):
        return float(value)
    code = SEX_SPELLING_CODES.get(str(value).strip().lower())
    if code is None:
        raise ValueError(f"sex must be one of F/M/female/male (any case), got {value!r}")
    return code


def is_missing(value: Any) -> bool:
    """Whether a table cell means "not recorded": None, NaN, or a :data:`MISSING_TOKENS` text (any case).

    Examples:
        >>> is_missing(" N/A "), is_missing("0")
        (True, False)
    """
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS
