"""monai_ms.data.fields: the one definition of an entry's fields, and the old import paths that re-export it."""

from __future__ import annotations

import pytest

from monai_ms.data import fields


def test_old_homes_re_export_the_same_objects():
    from monai_ms.data import manifest, transforms
    from monai_ms.engines.inference import batch as batch_inference

    for name in ("SPLITS", "IMAGE_KEYS", "TASK_KEYS", "REQUIRED_KEYS", "AGE_RANGE", "EDSS_RANGE", "EDSS_STEP", "SEX_VALUES"):
        assert getattr(manifest, name) is getattr(fields, name), name
    for name in ("check_age", "check_edss", "normalise_sex"):
        assert getattr(manifest, name) is getattr(fields, name), name
    assert transforms.parse_sex is fields.parse_sex
    assert batch_inference.IMAGE_KEYS is fields.IMAGE_KEYS


def test_sex_codebook_is_one_table():
    # every accepted spelling maps to a stored value, and every stored value to its 0/1 code
    assert set(fields.SEX_VALUES.values()) == set(fields.SEX_CLASSES) == set(fields.SEX_CODES)
    assert fields.SEX_CODES == {"F": 0.0, "M": 1.0}
    for spelling, value in fields.SEX_VALUES.items():
        assert fields.normalise_sex(f" {spelling.upper()} ") == value
        assert fields.parse_sex(spelling) == fields.SEX_CODES[value] == fields.SEX_CONFIG_CODES[spelling]
    # the exported config's table covers what parse_sex accepts, as str(value).strip().lower() sees it
    for value in ("F", "female", " Male ", 0, 1, 0.0, 1.0):
        assert fields.SEX_CONFIG_CODES[str(value).strip().lower()] == fields.parse_sex(value)
    with pytest.raises(ValueError, match="F/M/female/male"):
        fields.parse_sex("x")
    with pytest.raises(ValueError, match="F, M, female, male"):
        fields.normalise_sex("x")


def test_sex_pattern_accepts_exactly_the_spellings():
    import re

    pattern = re.compile(fields.SEX_PATTERN)
    for spelling in fields.SEX_VALUES:
        assert pattern.match(spelling) and pattern.match(spelling.upper()) and pattern.match(spelling.capitalize())
    for bad in ("", "x", "fem", "males", " f"):
        assert not pattern.match(bad)


def test_value_rules_and_their_messages():
    assert fields.check_age(32) == 32.0 and fields.check_edss(3.5) == 3.5
    with pytest.raises(ValueError, match=r"a number of years in \[0, 120\], got 121"):
        fields.check_age(121)
    with pytest.raises(ValueError, match=r"in \[0, 10\] in steps of 0.5, got 2.3"):
        fields.check_edss(2.3)
    assert fields.is_missing(" N/A ") and fields.is_missing(float("nan")) and not fields.is_missing("0")


def test_task_keys_use_known_fields():
    known = set(fields.ENTRY_KEY_ORDER)
    assert set(fields.REQUIRED_KEYS) <= known and set(fields.MODALITY_KEYS) <= set(fields.IMAGE_KEYS)
    for task, keys in fields.TASK_KEYS.items():
        assert set(keys) <= known, task
