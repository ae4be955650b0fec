"""Any set of modalities: the synthetic FLAIR, manifests with FLAIR (CSV and BIDS), the per-modality checks."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest

from monai_ms.cli import main
from monai_ms.data import read_manifest
from monai_ms.data.fields import check_modalities, task_keys
from monai_ms.data.manifest import ManifestError, build_from_bids, build_from_csv, load_datalist, write_manifest
from monai_ms.data.synthetic import generate_cohort
from monai_ms.data.validation import validate_manifest


@pytest.fixture(scope="module")
def flair_cohorts(tmp_path_factory):
    """The same tiny cohort written twice: T1 + T2, and T1 + T2 + FLAIR (BIDS layout for the second)."""
    root = tmp_path_factory.mktemp("flair")
    generate_cohort(root / "plain", subjects=3, seed=11, tiny=True, workers=1)
    generate_cohort(root / "flair", subjects=3, seed=11, tiny=True, workers=1, modalities=["t1", "t2", "flair"])
    generate_cohort(root / "bids", subjects=2, seed=11, tiny=True, workers=1, layout="bids", modalities=["t1", "flair"])
    return root


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_adding_flair_changes_no_other_file(flair_cohorts):
    plain, flair = _files(flair_cohorts / "plain"), _files(flair_cohorts / "flair")
    added = sorted(set(flair) - set(plain))
    assert added and all(name.startswith("FLAIR/") and name.endswith("_FLAIR_preprocessed.nii.gz") for name in added)
    changed = [name for name in plain if plain[name] != flair[name]]
    assert changed == ["cohort.json"]  # it records the modalities
    assert json.loads(flair["cohort.json"])["parameters"]["modalities"] == ["t1", "t2", "flair"]
    assert "modalities" not in json.loads(plain["cohort.json"])["parameters"]


def test_flair_suppresses_csf_shows_lesions_bright_on_its_own_thick_slice_grid(flair_cohorts):
    folder = flair_cohorts / "flair"
    brighter, ordered = [], []
    for path in sorted((folder / "FLAIR").glob("*.nii.gz")):
        session = path.name.replace("_FLAIR_preprocessed.nii.gz", "")
        t1_image = nib.load(folder / "T1" / f"{session}_T1_preprocessed.nii.gz")
        flair_image = nib.load(path)
        assert nib.aff2axcodes(flair_image.affine) == ("L", "A", "S") and nib.aff2axcodes(t1_image.affine) == ("R", "A", "S")
        assert flair_image.header.get_zooms()[2] == pytest.approx(2 * t1_image.header.get_zooms()[2])
        flair = np.asanyarray(nibabel.processing.resample_from_to(flair_image, t1_image, order=1).dataobj)
        tissue = np.asanyarray(nib.load(folder / "tissue" / f"{session}_tissue.nii.gz").dataobj)
        mask = np.asanyarray(nib.load(folder / "masks" / f"{session}_lesion.nii.gz").dataobj) > 0
        csf, gm, wm = (flair[tissue == label].mean() for label in (1, 2, 3))
        ordered.append(csf < 0.8 * min(wm, gm))  # at 4 mm with 8 mm slices grey matter is mostly partial volume
        if mask.sum() >= 5:
            brighter.append(flair[mask].mean() > 1.1 * max(gm, wm))
    assert all(ordered) and brighter and np.mean(brighter) > 0.8


def test_bids_cohort_with_flair_builds_the_right_manifest(flair_cohorts, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(flair_cohorts / "bids", root)
    # a contrast-enhanced T1 (BIDS ce- entity) beside the plain T1w of one session: t1ce, and t1 stays unambiguous
    first_t1 = sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))[0]
    image = nib.load(first_t1)
    enhanced = nib.Nifti1Image(np.asanyarray(image.dataobj) * np.float32(1.1), image.affine, image.header)
    nib.save(enhanced, first_t1.with_name(first_t1.name.replace("_T1w", "_ce-gadolinium_T1w")))
    entries = build_from_bids(root, relative_to=root)
    assert entries and all("flair" in e and e["flair"].endswith("_FLAIR.nii.gz") and "t2" not in e for e in entries)
    with_ce = [e for e in entries if "t1ce" in e]
    assert len(with_ce) == 1 and with_ce[0]["t1ce"].endswith("_ce-gadolinium_T1w.nii.gz")
    assert with_ce[0]["t1"] == str(first_t1.relative_to(root))
    # the command line: the manifest passes validation for a T1 + FLAIR task, not for the default T1 + T2
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", "--bids", str(root), "--out", str(out), "--val", "0.5", "--test", "0"]) == 0
    manifest = read_manifest(out)
    assert all("flair" in e for split in ("training", "validation") for e in manifest[split])
    assert validate_manifest(out, task="lesion_seg", modalities=["t1", "flair"]).ok
    report = validate_manifest(out, task="lesion_seg")
    assert not report.ok and any("missing key t2 (needed by task lesion_seg)" in line for line in report.problem_lines())


def test_csv_flair_pattern_and_a_missing_flair_is_named(flair_cohorts, tmp_path):
    folder = tmp_path / "cohort"
    shutil.copytree(flair_cohorts / "flair", folder)
    entries = build_from_csv(folder / "metadata.csv", flair_pattern="FLAIR/{session}_FLAIR_preprocessed.nii.gz", relative_to=folder)
    assert all(e["flair"] == f"FLAIR/{e['session']}_FLAIR_preprocessed.nii.gz" for e in entries)
    gone = folder / entries[1]["flair"]
    gone.unlink()
    write_manifest({"training": entries[:-1], "validation": entries[-1:], "testing": []}, folder / "manifest.json")
    with pytest.raises(ManifestError) as error:
        load_datalist(folder / "manifest.json", "training", task="lesion_seg", modalities=["t1", "flair"])
    assert f"session {entries[1]['session']}: flair {entries[1]['flair']}: file not found" in str(error.value)


def test_flair_in_the_t2_column_and_t2_in_the_flair_column_are_named(flair_cohorts, tmp_path):
    folder = flair_cohorts / "flair"
    session = sorted((folder / "FLAIR").glob("*.nii.gz"))[0].name.replace("_FLAIR_preprocessed.nii.gz", "")
    entry = {
        "subject": "P1",
        "session": session,
        "t1": str(folder / "T1" / f"{session}_T1_preprocessed.nii.gz"),
        "t2": str(folder / "FLAIR" / f"{session}_FLAIR_preprocessed.nii.gz"),
        "flair": str(folder / "T2" / f"{session}_T2_preprocessed.nii.gz"),
    }
    report = validate_manifest({"training": [entry], "validation": [], "testing": []}, splits=["training"])
    lines = report.problem_lines()
    assert any("t2 " in line and "looks T1-weighted, not T2-weighted" in line and "a FLAIR has dark CSF too" in line for line in lines)
    assert any("flair " in line and "looks T2-weighted, not FLAIR-weighted" in line for line in lines), lines


def test_modalities_setting_rules():
    assert task_keys("lesion_seg", ["t1", "flair"]) == ("subject", "session", "t1", "flair", "lesion")
    assert task_keys("edss", ["t1", "t2", "flair"])[2:5] == ("t1", "t2", "flair")
    assert task_keys("lesion_seg") == ("subject", "session", "t1", "t2", "lesion")
    for bad, rule in ((["flair", "t1"], "start with t1"), (["t1", "dwi"], "among"), (["t1", "t1"], "distinct"), ("t1", "list")):
        with pytest.raises(ValueError, match=rule):
            check_modalities(bad)
