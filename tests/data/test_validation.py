"""validate_manifest: a valid cohort passes; every bad-input case gives exactly one clear problem line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _nifti_factory import T1_AFFINE, T1_SHAPE, T2_AFFINE, T2_SHAPE, ball, manifest_for, write_volume

from monai_ms.cli import main
from monai_ms.data.manifest import ManifestError
from monai_ms.data.validation import validate_manifest


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, dict]:
    """(folder, manifest dict) of 4 subjects / 6 sessions; T2 on its own LPS, 4x4x6 mm grid."""
    return tmp_path, manifest_for(tmp_path)


def _save(root: Path, manifest: dict) -> Path:
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_valid_cohort_passes_and_says_what_it_looked_at(cohort):
    root, manifest = cohort
    report = validate_manifest(_save(root, manifest), task="edss")
    assert report.ok, report.format()
    text = report.format()
    assert "entries: training 3, validation 1, testing 2 (6 sessions checked, 4 subjects)" in text
    assert "t1: 6 of 6 sessions, 6 files found, shape 12x12x12, spacing 4x4x4 mm" in text
    assert "t2: 6 of 6 sessions, 6 files found, shape 12x12x8, spacing 4x4x6 mm" in text
    assert "lesion: 6 of 6 sessions" in text
    assert "sex: F 3, M 3" in text
    assert "age: 6 sessions, 27-31 years" in text
    assert text.splitlines()[-1] == "checked 6 sessions, 18 files: 0 problems"


def test_sex_spellings_and_singleton_4d_are_accepted(cohort):
    root, manifest = cohort
    manifest["training"][0]["sex"] = "MALE"  # P01
    manifest["training"][1]["sex"] = "m"  # P01
    manifest["training"][2]["sex"] = "Female"  # P02
    head = ball(T1_SHAPE, T1_AFFINE)[..., None]  # (12, 12, 12, 1) as some converters write
    write_volume(root / manifest["training"][0]["t1"], head)
    assert validate_manifest(_save(root, manifest)).ok


def _file(root: Path, manifest: dict, key: str = "t1", split: str = "training", index: int = 0) -> Path:
    return root / manifest[split][index][key]


def _truncate(root, manifest):
    path = _file(root, manifest, "t1")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(root, manifest):
    _file(root, manifest, "t1").write_bytes(b"this is not a NIfTI file at all" * 20)


def _set(split: str, index: int, key: str, value):
    def change(root, manifest):
        if value is None:
            del manifest[split][index][key]
        else:
            manifest[split][index][key] = value

    return change


def _write(key: str, make, affine=T1_AFFINE):
    def change(root, manifest):
        write_volume(_file(root, manifest, key), make(), affine)

    return change


def _uncompressed_truncated(root, manifest):
    path = root / "T1" / "plain.nii"
    nib.save(nib.Nifti1Image(ball(T1_SHAPE, T1_AFFINE), T1_AFFINE), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    manifest["training"][0]["t1"] = "T1/plain.nii"


def _nan():
    data = ball(T1_SHAPE, T1_AFFINE)
    data[6, 6, 6] = np.nan
    data[6, 6, 7] = np.inf
    return data


def _duplicate(root, manifest):
    manifest["testing"].append(dict(manifest["training"][0], subject="P99"))


def _leak(root, manifest):
    manifest["validation"].append(manifest["training"].pop(1))  # P01's second session


def _outside(root, manifest):
    outside = root.parent / f"{root.name}_elsewhere" / "t1.nii.gz"
    write_volume(outside, ball(T1_SHAPE, T1_AFFINE))
    manifest["training"][0]["t1"] = f"../{root.name}_elsewhere/t1.nii.gz"


def _same_file(root, manifest):
    manifest["training"][1]["t2"] = manifest["training"][0]["t2"]


def _sex_differs(root, manifest):
    manifest["training"][1]["sex"] = "M" if manifest["training"][0]["sex"] == "F" else "F"


# (id, change, validate kwargs, expected where, expected message part)
BAD_INPUTS = [
    (
        "missing file",
        _set("training", 0, "t2", "T2/nope.nii.gz"),
        {},
        "training[0] session sub-01-01",
        "t2 T2/nope.nii.gz: file not found (looked at ",
    ),
    ("truncated gzip", _truncate, {}, "training[0] session sub-01-01", "the file is truncated or corrupt"),
    ("truncated .nii", _uncompressed_truncated, {"check_voxels": False}, "training[0]", "file truncated:"),
    ("unreadable", _garbage, {}, "training[0] session sub-01-01", "unreadable NIfTI header"),
    (
        "not 3D",
        _write("t1", lambda: np.ones((*T1_SHAPE, 3), np.float32)),
        {},
        "training[0]",
        "must be a 3D volume (a 4th dimension of size 1 is fine), got shape 12x12x12x3",
    ),
    ("NaN/inf", _write("t1", _nan), {}, "training[0]", "2 NaN/inf voxels"),
    (
        "empty image",
        _write("t2", lambda: np.zeros(T2_SHAPE, np.float32), T2_AFFINE),
        {},
        "training[0]",
        "empty image (every voxel is 0)",
    ),
    (
        "T1/T2 fields of view apart",
        _write("t2", lambda: ball(T2_SHAPE, T2_AFFINE), T2_AFFINE + np.r_[[[0, 0, 0, 300]] * 3, [[0, 0, 0, 0]]]),
        {},
        "training[0]",
        "T1 and T2 do not cover the same head: their fields of view overlap by 0%",
    ),
    (
        "T1/T2 heads apart",
        lambda root, m: (
            write_volume(_file(root, m, "t1"), ball(T1_SHAPE, T1_AFFINE, centre_mm=(-14, -14, -14), radius_mm=8)),
            write_volume(
                _file(root, m, "t2"), ball(T2_SHAPE, T2_AFFINE, centre_mm=(14, 14, 14), radius_mm=8), T2_AFFINE
            ),
        ),
        {},
        "training[0]",
        "T1 and T2 do not show the same head: foreground centres",
    ),
    (
        "lesion shape",
        _write("lesion", lambda: np.zeros((12, 12, 10), np.uint8)),
        {},
        "training[0]",
        "not on the T1 grid: shape 12x12x10, T1 12x12x12",
    ),
    (
        "lesion affine",
        _write("lesion", lambda: np.zeros(T1_SHAPE, np.uint8), T1_AFFINE + np.r_[[[0, 0, 0, 2]] * 3, [[0, 0, 0, 0]]]),
        {},
        "training[0]",
        "not on the T1 grid: affine differs from the T1's by up to 2 mm",
    ),
    (
        "lesion not binary",
        _write("lesion", lambda: np.pad(np.full((2, 2, 2), 255, np.uint8), 5)),
        {},
        "training[0]",
        "lesion mask must be binary (0/1), found values 255",
    ),
    (
        "age missing",
        _set("training", 0, "age", None),
        {"task": "brain_age"},
        "training[0] session sub-01-01",
        "missing key age (needed by task brain_age)",
    ),
    (
        "age not numeric",
        _set("training", 0, "age", "thirty"),
        {},
        "training[0]",
        "age must be a number of years in [0, 120], got 'thirty' (text)",
    ),
    (
        "age implausible",
        _set("training", 0, "age", 150.0),
        {},
        "training[0]",
        "age must be a number of years in [0, 120], got 150",
    ),
    (
        "sex invalid",
        _set("training", 0, "sex", "X"),
        {},
        "training[0]",
        "sex must be one of F, M, female, male (any case), got 'X'",
    ),
    (
        "EDSS out of range",
        _set("training", 0, "edss", 11),
        {},
        "training[0]",
        "edss must be in [0, 10] in steps of 0.5, got 11",
    ),
    (
        "EDSS off step",
        _set("training", 0, "edss", 2.3),
        {},
        "training[0]",
        "edss must be in [0, 10] in steps of 0.5, got 2.3",
    ),
    ("duplicate session", _duplicate, {}, "training[0] session sub-01-01", "duplicate session id: also at testing[2]"),
    ("subject in two splits", _leak, {}, "subject P01", "in more than one split (training[0], validation[1]): leakage"),
    (
        "task key missing",
        _set("validation", 0, "lesion", None),
        {"task": "lesion_seg"},
        "validation[0]",
        "missing key lesion (needed by task lesion_seg)",
    ),
    ("path outside root", _outside, {"refuse_outside_root": True}, "training[0]", "path escapes the manifest folder"),
    (
        "empty validation",
        lambda root, m: m.update(validation=[]),
        {"task": "sex"},
        "validation",
        "empty split: no validation entries, and task sex needs them",
    ),
    (
        "empty testing asked",
        lambda root, m: m.update(testing=[]),
        {"splits": ["training", "testing"]},
        "testing",
        "empty split",
    ),
    (
        "same file twice",
        _same_file,
        {},
        "training[0] session sub-01-01",
        "t2 T2/sub-01-01_T2_preprocessed.nii.gz: the same image file is also used by "
        "training[1] session sub-01-02 (t2)",
    ),
    ("sex differs", _sex_differs, {}, "subject P01", "sex differs between sessions"),
]


@pytest.mark.parametrize(
    "change, kwargs, where, message", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_each_bad_input_gives_one_clear_problem(cohort, change, kwargs, where, message):
    root, manifest = cohort
    change(root, manifest)
    report = validate_manifest(_save(root, manifest), **kwargs)
    assert len(report.problems) == 1, report.format()
    line = report.problem_lines()[0]
    assert line.startswith(where) and message in line, line
    assert report.format().splitlines()[-1].endswith(": 1 problem")


def test_problem_line_names_split_session_key_file_and_absolute_path(cohort):
    root, manifest = cohort
    (root / manifest["training"][0]["t2"]).unlink()
    [line] = validate_manifest(_save(root, manifest)).problem_lines()
    absolute = root / "T2" / "sub-01-01_T2_preprocessed.nii.gz"
    assert line == (
        f"training[0] session sub-01-01: t2 T2/sub-01-01_T2_preprocessed.nii.gz: file not found (looked at {absolute})"
    )


def test_headers_only_reads_no_voxels(cohort):
    root, manifest = cohort
    write_volume(_file(root, manifest, "t1"), _nan())
    report = validate_manifest(_save(root, manifest), check_voxels=False)
    assert report.ok and "headers only" in report.format()


def test_every_problem_is_reported_not_just_the_first(cohort):
    root, manifest = cohort
    manifest["training"][0]["edss"] = 12
    manifest["training"][1]["sex"] = "?"
    (root / manifest["testing"][0]["t1"]).unlink()
    report = validate_manifest(_save(root, manifest))
    assert len(report.problems) == 3 and report.final_line().endswith("3 problems")


def test_gzip_with_wrong_payload_is_reported(cohort):
    root, manifest = cohort
    _file(root, manifest, "t1").write_bytes(gzip.compress(b"\0" * 1000))
    [line] = validate_manifest(_save(root, manifest)).problem_lines()
    assert "unreadable NIfTI header" in line


def test_unknown_task_is_refused(cohort):
    root, manifest = cohort
    with pytest.raises(ManifestError, match="task must be one of"):
        validate_manifest(_save(root, manifest), task="age")


def test_cli_validate_exit_codes_and_output(cohort, capsys):
    root, manifest = cohort
    path = _save(root, manifest)
    assert main(["manifest", "validate", str(path), "--task", "edss"]) == 0
    out = capsys.readouterr().out
    assert "sex: F 3, M 3" in out and out.strip().endswith("checked 6 sessions, 18 files: 0 problems")
    manifest["training"][0]["edss"] = 11
    _save(root, manifest)
    assert main(["manifest", "validate", str(path), "--headers-only"]) == 1
    out = capsys.readouterr().out
    assert "training[0] session sub-01-01: edss must be in [0, 10] in steps of 0.5, got 11" in out
    assert main(["manifest", "validate", str(root / "missing.json")]) == 1
    assert "manifest not found" in capsys.readouterr().err


def test_cli_build_reports_table_and_file_problems_in_one_pass(tmp_path, capsys):
    from _nifti_factory import write_seed_cohort

    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=3)
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].replace(",female,", ",X,")  # sub-02-01: a table problem
    csv_path.write_text("\n".join(lines) + "\n")
    (tmp_path / "T2" / "sub-03-01_T2_preprocessed.nii.gz").unlink()  # another row: a file problem
    (tmp_path / "T1" / "sub-02-01_T1_preprocessed.nii.gz").write_bytes(b"broken")  # the bad row's own file
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", "--csv", str(csv_path), "--out", str(out), "--task", "sex", "--test", "0"]) == 1
    printed = capsys.readouterr().out
    assert "metadata.csv line 4 (MRI_ID sub-02-01): Sex must be one of F, M, female, male (any case), got 'X'" in printed
    assert "session sub-03-01: t2 T2/sub-03-01_T2_preprocessed.nii.gz: file not found" in printed
    assert "session sub-02-01: t1 T1/sub-02-01_T1_preprocessed.nii.gz: unreadable NIfTI header" in printed
    assert "missing key sex" not in printed  # the table line already says what is wrong with it
    assert "nothing written: fix the 1 table problem(s) and 2 manifest problem(s) above" in printed
    assert not out.exists()


def test_cli_build_from_bids_reports_table_and_file_problems_in_one_pass(tmp_path, capsys):
    from _nifti_factory import write_bids_cohort

    root = write_bids_cohort(tmp_path / "bids")
    sessions = root / "sub-P01" / "sub-P01_sessions.tsv"
    sessions.write_text(sessions.read_text().replace("\t3.5\t", "\t12\t"))  # sub-P01_ses-02: EDSS 12
    (root / "sub-P02" / "ses-01" / "anat" / "sub-P02_ses-01_T2w.nii.gz").write_bytes(b"broken")
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", "--bids", str(root), "--out", str(out), "--test", "0", "--val", "0.4"]) == 1
    printed = capsys.readouterr().out
    assert "sub-P01_sessions.tsv line 3 (sub-P01_ses-02): edss must be in [0, 10] in steps of 0.5, got 12" in printed
    assert "session sub-P02_ses-01: t2 bids/sub-P02/ses-01/anat/sub-P02_ses-01_T2w.nii.gz: unreadable" in printed
    assert "nothing written: fix the 1 table problem(s) and 1 manifest problem(s) above" in printed
    assert not out.exists()
