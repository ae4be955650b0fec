"""Content checks: each on real NIfTI files written here (tiny tissue phantoms), and on generator images.

A phantom is a ball "brain" of three tissues with realistic shares (WM ~40%, GM ~43%, CSF ~17%) and
T1 or T2 contrast, a smooth multiplicative bias field, noise and an arbitrary scanner scale; the T2 is on
its own LPS grid with thick slices, like the synthetic cohort's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_ms.data import content_checks as checks
from monai_ms.data.manifest import read_manifest
from monai_ms.data.validation import validate_manifest
from monai_ms.engines import BatchInference

T1_AFFINE = np.array([[4.0, 0, 0, -46], [0, 4.0, 0, -46], [0, 0, 4.0, -46], [0, 0, 0, 1]])
T1_SHAPE = (24, 24, 24)
T2_AFFINE = np.array([[-4.0, 0, 0, 46], [0, -4.0, 0, 46], [0, 0, 6.0, -45], [0, 0, 0, 1]])
T2_SHAPE = (24, 24, 16)
RADIUS_MM = 40.0
# tissue intensities (before bias and scale): CSF, GM, WM
CONTRAST = {"t1": (0.45, 0.75, 1.0), "t2": (1.0, 0.75, 0.55)}


def _world(shape, affine) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def phantom(
    modality: str,
    shape=T1_SHAPE,
    affine=T1_AFFINE,
    seed: int = 0,
    scale: float = 700.0,
    bias: float = 0.15,
    background: float = 0.0,
) -> np.ndarray:
    """float32 brain phantom: ventricles + outer rim CSF, WM core, GM shell; zero outside unless ``background``."""
    rng = np.random.default_rng(seed)
    world = _world(shape, affine)
    r = np.linalg.norm(world, axis=-1) / RADIUS_MM
    csf, gm, wm = CONTRAST[modality]
    value = np.select([r < 0.3, r < 0.75, r < 0.95, r <= 1.0], [csf, wm, gm, csf], 0.0)
    x, y, z = np.moveaxis(world / 100.0, -1, 0)
    field = np.exp(bias * (x + 0.7 * y - 0.5 * z + x * x - y * z))
    noisy = value * field + rng.normal(0, 0.03, shape) * (value > 0)
    if background:
        noisy = np.where(value > 0, noisy, np.abs(rng.normal(0, background, shape)))
    return (np.clip(noisy, 0, None) * scale).astype(np.float32)


def lesion_mask(shape=T1_SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[10:12, 10:12, 12:14] = 1
    return mask


def save(path: Path, data: np.ndarray, affine=T1_AFFINE, codes: tuple[int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    if codes is not None:
        image.set_qform(affine, code=codes[0])
        image.set_sform(affine, code=codes[1])
    nib.save(image, str(path))
    return path


def cohort(root: Path, sessions: int = 3) -> Path:
    """A valid manifest over ``sessions`` phantom sessions (T1, T2 on its own grid, lesion mask)."""
    entries = []
    for index in range(sessions):
        name = f"s{index}"
        save(root / f"{name}_T1.nii.gz", phantom("t1", seed=index, scale=500 + 300 * index))
        save(root / f"{name}_T2.nii.gz", phantom("t2", T2_SHAPE, T2_AFFINE, seed=100 + index), T2_AFFINE)
        save(root / f"{name}_lesion.nii.gz", lesion_mask())
        entries.append(
            {
                "subject": f"P{index}",
                "session": name,
                "t1": f"{name}_T1.nii.gz",
                "t2": f"{name}_T2.nii.gz",
                "lesion": f"{name}_lesion.nii.gz",
                "age": 40.0,
                "sex": "F",
            }
        )
    path = root / "manifest.json"
    path.write_text(json.dumps({"training": entries[:-1], "testing": entries[-1:]}))
    return path


def _edit(path: Path, index: int, **changes) -> None:
    manifest = json.loads(path.read_text())
    manifest["training"][index].update(changes)
    path.write_text(json.dumps(manifest))


def _only_problem(path: Path) -> str:
    report = validate_manifest(path)
    assert len(report.problems) == 1 and not report.warnings, report.format()
    return report.problem_lines()[0]


# ---------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("scale", [1.0, 4.0, 3000.0])
@pytest.mark.parametrize("bias", [0.0, 0.3])
def test_contrast_signature_survives_scale_and_bias_fields(scale, bias):
    t1 = checks.foreground_sample(phantom("t1", scale=scale, bias=bias)[phantom("t1") > 0])
    t2 = checks.foreground_sample(phantom("t2", scale=scale, bias=bias)[phantom("t2") > 0])
    assert checks.contrast_modality(checks.tissue_contrast(t1)) == "t1"
    assert checks.contrast_modality(checks.tissue_contrast(t2)) == "t2"


def test_depth_signature_decides_where_the_class_shares_are_fooled_by_a_bias_field():
    """A strong bias field makes a T1's class shares look T2 (the check refused T1s of the 'bias' and 'all'
    cohort shifts); the core-vs-surface ordering still says T1, and it decides."""
    t1, t2 = phantom("t1", bias=1.5), phantom("t2", bias=1.5)
    shares = checks.tissue_contrast(checks.foreground_sample(t1[t1 > 0]))
    assert checks.contrast_modality(shares) == "t2"  # the class-share rule alone gets it wrong
    depth_t1, depth_t2 = checks.depth_contrast(t1, (4.0, 4.0, 4.0)), checks.depth_contrast(t2, (4.0, 4.0, 4.0))
    assert depth_t1 > 0.3 and depth_t2 < -0.3
    assert checks.contrast_modality(replace(shares, depth_log_ratio=depth_t1)) == "t1"
    assert "deep brain" in checks.describe_contrast(replace(shares, depth_log_ratio=depth_t1))


def test_depth_signature_needs_a_core():
    """A slab thinner than twice the core depth has no core: undetermined, and the class shares decide."""
    slab = phantom("t1")[:, :, 10:14]
    assert checks.depth_contrast(slab, (4.0, 4.0, 4.0)) is None


def test_a_strongly_biased_t1_passes_the_file_checks(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "biased_T1.nii.gz", phantom("t1", seed=3, bias=1.5))
    _edit(path, 0, t1="biased_T1.nii.gz")
    report = validate_manifest(path)
    assert report.ok, report.format()


def test_uniform_noise_and_small_samples_are_undetermined():
    noise = np.random.default_rng(0).uniform(0.2, 1.0, 50_000)
    assert checks.contrast_modality(checks.tissue_contrast(noise)) is None
    assert checks.tissue_contrast(noise[:500]) is None  # fewer than MIN_CONTRAST_VOXELS


def test_voxel_size_rules_refuse_thumbnails_accept_thick_t2_warn_2d_t1():
    assert "in-plane 10 mm is more than 6 mm" in checks.voxel_size_problem((10.0, 10.0, 10.0))
    assert checks.voxel_size_problem((0.9, 0.9, 6.0)) is None  # a 2D T2: normal
    assert "thicker than 10 mm" in checks.voxel_size_problem((1.0, 1.0, 12.0))
    assert "wrong units" in checks.voxel_size_problem((0.001, 0.001, 0.001))
    assert checks.voxel_size_warning((1.0, 1.0, 1.2)) is None
    assert "accepted" in checks.voxel_size_warning((0.9, 0.9, 5.0))


def test_voxel_hash_sees_one_changed_voxel():
    data = phantom("t1")
    changed = data.copy()
    changed[12, 12, 12] += 1
    assert checks.voxel_hash(data) == checks.voxel_hash(data.copy()) != checks.voxel_hash(changed)


# ---------------------------------------------------------------------------------------------- on files


def test_phantom_cohort_validates_with_no_problem_and_no_warning(tmp_path):
    report = validate_manifest(cohort(tmp_path))
    assert report.ok and not report.warnings, report.format()
    assert report.final_line() == "checked 3 sessions, 9 files: 0 problems"


def test_swapped_columns_give_one_line_naming_both_and_not_the_grid_effect(tmp_path):
    path = cohort(tmp_path)
    _edit(path, 0, t1="s0_T2.nii.gz", t2="s0_T1.nii.gz")
    line = _only_problem(path)  # no "lesion ... not on the T1 grid": that is the swap's effect
    assert line.startswith("training[0] session s0: t1 s0_T2.nii.gz: looks swapped with t2 s0_T1.nii.gz"), line
    assert "swap the two columns" in line


def test_a_t2_in_the_t1_column_is_named(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "other_T2.nii.gz", phantom("t2", seed=7))  # a T2 on the T1 grid
    _edit(path, 1, t1="other_T2.nii.gz")
    line = _only_problem(path)
    assert line.startswith("training[1] session s1: t1 other_T2.nii.gz: looks T2-weighted, not T1-weighted"), line


def test_a_label_map_in_an_intensity_column(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "labels.nii.gz", (phantom("t1") > 600).astype(np.float32) * 3 + (phantom("t1") > 0))
    _edit(path, 0, t1="labels.nii.gz")
    line = _only_problem(path)
    assert "t1 labels.nii.gz: holds only 2 distinct non-zero values (1, 4), a label map" in line, line


def test_unknown_orientation(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "s1_T2.nii.gz", phantom("t2", T2_SHAPE, T2_AFFINE, seed=101), T2_AFFINE, codes=(0, 0))
    line = _only_problem(path)  # and no "T1 and T2 do not cover the same head" from the meaningless affine
    assert line.startswith("training[1] session s1: t2 s1_T2.nii.gz: orientation unknown: qform_code and sform_code")


def test_header_checks_run_without_reading_voxels(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "s0_T1.nii.gz", phantom("t1"), codes=(0, 0))
    save(tmp_path / "s1_T1.nii.gz", phantom("t2", seed=9))  # a T2 in the T1 column: needs voxels to see
    lines = validate_manifest(path, check_voxels=False).problem_lines()
    assert len(lines) == 1 and "s0_T1.nii.gz: orientation unknown" in lines[0], lines


def test_a_10mm_scan_is_refused_as_the_cause(tmp_path):
    path = cohort(tmp_path)
    coarse = np.diag([10.0, 10.0, 10.0, 1.0])
    coarse[:3, 3] = -45
    save(tmp_path / "thumb_T1.nii.gz", phantom("t1", (10, 10, 10), coarse), coarse)
    _edit(path, 0, t1="thumb_T1.nii.gz")
    line = _only_problem(path)  # not "lesion ... not on the T1 grid"
    assert "t1 thumb_T1.nii.gz: voxel size 10x10x10 mm: in-plane 10 mm is more than 6 mm" in line and "refused" in line


def test_thick_t2_slices_pass_and_a_2d_t1_is_a_warning(tmp_path):
    path = cohort(tmp_path)
    thick = np.diag([-4.0, -4.0, 9.0, 1.0])
    thick[:3, 3] = (46, 46, -45)
    save(tmp_path / "s0_T2.nii.gz", phantom("t2", (24, 24, 11), thick), thick)
    assert validate_manifest(path).ok and not validate_manifest(path).warnings
    t1_2d = np.diag([4.0, 4.0, 9.0, 1.0])
    t1_2d[:3, 3] = (-46, -46, -45)
    save(tmp_path / "s1_T1.nii.gz", phantom("t1", (24, 24, 11), t1_2d), t1_2d)
    save(tmp_path / "s1_lesion.nii.gz", lesion_mask((24, 24, 11)), t1_2d)
    report = validate_manifest(path)
    assert report.ok and len(report.warnings) == 1, report.format()
    assert report.warning_lines()[0].startswith("warning: training[1] session s1: t1 s1_T1.nii.gz: voxel size 4x4x9")
    assert report.final_line().endswith("0 problems, 1 warning")


def test_two_sessions_with_the_same_voxels_are_reported_with_both(tmp_path):
    path = cohort(tmp_path)
    shutil.copy(tmp_path / "s0_T1.nii.gz", tmp_path / "copy_T1.nii.gz")  # another file, same image
    _edit(path, 1, t1="copy_T1.nii.gz")
    report = validate_manifest(path)
    tail = ": a copy, one of them is not this session's scan"
    assert report.problem_lines() == [
        "training[0] session s0: t1 s0_T1.nii.gz: same voxel contents as t1 copy_T1.nii.gz of training[1] session s1"
        + tail,
        "training[1] session s1: t1 copy_T1.nii.gz: same voxel contents as t1 s0_T1.nii.gz of training[0] session s0"
        + tail,
    ], report.format()
    assert {p.kind for p in report.problems} == {"duplicate_contents"}


def test_a_lesion_mask_covering_the_volume(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "s0_lesion.nii.gz", np.ones(T1_SHAPE, np.uint8))
    line = _only_problem(path)
    assert "lesion s0_lesion.nii.gz: lesion mask covers 13824 voxels" in line and "of the T1's brain" in line, line


def test_a_head_that_is_not_skull_stripped_is_a_warning_not_a_false_contrast_alarm(tmp_path):
    path = cohort(tmp_path)
    big = np.diag([4.0, 4.0, 4.0, 1.0])
    big[:3, 3] = -78
    head = phantom("t1", (40, 40, 40), big, background=0.08)  # noisy background: the whole FOV is non-zero
    save(tmp_path / "s0_T1.nii.gz", head, big)
    save(tmp_path / "s0_lesion.nii.gz", lesion_mask((40, 40, 40)), big)
    report = validate_manifest(path)
    assert report.ok and len(report.warnings) == 1, report.format()
    assert "not skull-stripped? 4.1 L of non-zero voxels" in report.warning_lines()[0]


def test_one_pass_a_malformed_entry_does_not_hide_the_file_checks_of_the_others(tmp_path):
    path = cohort(tmp_path)
    manifest = json.loads(path.read_text())
    manifest["training"].append("not an entry")
    path.write_text(json.dumps(manifest))
    (tmp_path / "s0_T2.nii.gz").unlink()
    lines = validate_manifest(path).problem_lines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("training[0] session s0: t2 s0_T2.nii.gz: file not found")
    assert lines[1] == "training[2] (no session id): must be an object (one scan session), got 'not an entry'"


def test_problems_carry_structured_fields(tmp_path):
    path = cohort(tmp_path)
    _edit(path, 0, t1="s0_T2.nii.gz", t2="s0_T1.nii.gz")
    [problem] = validate_manifest(path).problems
    assert (problem.split, problem.index, problem.session, problem.key, problem.kind) == (
        "training",
        0,
        "s0",
        "t1",
        "file",
    )
    assert problem.path == str(tmp_path / "s0_T2.nii.gz")


def test_batch_inference_fails_only_the_scan_that_fails_a_content_check(tmp_path):
    path = cohort(tmp_path, sessions=4)
    manifest = json.loads(path.read_text())
    manifest = {"testing": manifest["training"] + manifest["testing"]}
    manifest["testing"][1]["t1"] = "s1_T2.nii.gz"  # a T2 in the T1 column
    manifest["testing"][1]["t2"] = "s1_T1.nii.gz"
    path.write_text(json.dumps(manifest))
    entries = read_manifest(path)["testing"]
    batch = BatchInference(entries, tmp_path / "records", progress=False)
    assert batch.validate(path, task="brain_age_inference", split="testing")
    assert list(batch.failures) == ["s1"] and "looks swapped with t2 s1_T1.nii.gz" in batch.failures["s1"]
    assert [e["session"] for e in batch.pending()] == ["s0", "s1", "s2", "s3"]  # s1 gets its error row


# ---------------------------------------------------------------------------------------------- generator images


def test_generator_cohort_has_the_right_contrast_and_no_warning(tiny_manifest):
    """The tiny synthetic cohort (MNI anatomy, bias fields, Rician noise, scanner scales): all pass, clearly."""
    report = validate_manifest(tiny_manifest, task="edss")
    assert report.ok and not report.warnings, report.format()
    manifest = read_manifest(tiny_manifest)
    for entry in manifest["training"][:3]:
        for key in ("t1", "t2"):
            data = np.asanyarray(nib.load(str(tiny_manifest.parent / entry[key])).dataobj)
            contrast = checks.tissue_contrast(checks.foreground_sample(data[data != 0]))
            assert checks.contrast_modality(contrast) == key
            assert abs(contrast.log_ratio) > 2 * checks.CONTRAST_MARGIN  # far from the undetermined band


def test_a_t1_in_the_t2_column_mentions_flair(tmp_path):
    path = cohort(tmp_path)
    save(tmp_path / "other_T1.nii.gz", phantom("t1", T2_SHAPE, T2_AFFINE, seed=8), T2_AFFINE)
    _edit(path, 0, t2="other_T1.nii.gz")
    line = _only_problem(path)
    assert "t2 other_T1.nii.gz: looks T1-weighted, not T2-weighted" in line and "a FLAIR has dark CSF too" in line
