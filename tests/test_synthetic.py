"""The synthetic cohort on the real MNI template: files, labels, alignment, lesions, determinism."""

from __future__ import annotations

import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import pytest

from monai_ms.cli import main
from monai_ms.data import read_manifest
from monai_ms.data.synthetic import generate_cohort
from monai_ms.data.templates import load_template

SEED_COLUMNS = ["Patient_ID", "MRI_ID", "MR_System", "Number_of_Lesions", "Scan_Date", "Sex", "Date_of_Birth", "EDSS", "Age_at_Scan"]


@pytest.fixture(scope="module")
def cohort(tiny_manifest):
    """(cohort folder, metadata table, manifest entries) of the session's tiny cohort (seed layout)."""
    folder = tiny_manifest.parent / "cohort"
    manifest = read_manifest(tiny_manifest)
    entries = [e for split in ("training", "validation", "testing") for e in manifest[split]]
    for entry in entries:
        for key in ("t1", "t2", "lesion", "tissue"):
            entry[key] = tiny_manifest.parent / entry[key]
    return folder, pd.read_csv(folder / "metadata.csv"), entries


def test_template_tissue_maps_partition_the_brain():
    template = load_template()
    assert template.t1.shape == template.t2.shape == template.gm.shape == (193, 229, 193)
    for tissue in (template.gm, template.wm, template.csf):
        assert tissue.min() >= 0 and tissue.max() <= 1
    brain = template.brain_mask > 0.5
    total = (template.gm + template.wm + template.csf)[brain]
    assert np.median(total) == pytest.approx(1.0, abs=0.05)
    assert template.ventricles.sum() > 5000  # about 20 mL of lateral ventricles at 1 mm


def test_seed_layout_table_and_files(cohort):
    folder, table, entries = cohort
    assert list(table.columns) == SEED_COLUMNS
    assert table["MRI_ID"].is_unique and len(table) == len(entries)
    assert table["EDSS"].between(0, 10).all() and (table["EDSS"] * 2 == (table["EDSS"] * 2).round()).all()
    assert table["Age_at_Scan"].between(18, 80).all() and set(table["Sex"]) <= {"F", "M"}
    assert (table.groupby("Patient_ID")["MRI_ID"].count() > 1).any()  # some patients have two sessions
    for mri_id in table["MRI_ID"]:
        for path in (f"T1/{mri_id}_T1_preprocessed.nii.gz", f"T2/{mri_id}_T2_preprocessed.nii.gz", f"masks/{mri_id}_lesion.nii.gz"):
            assert nib.load(folder / path).shape  # opens in nibabel
    assert "Copyright" in (folder / "LICENSE_MNI_ICBM152.txt").read_text()


def _world_centroid(image):
    data = np.asanyarray(image.dataobj)
    ijk = np.argwhere(data > 0).mean(0)
    return image.affine[:3, :3] @ ijk + image.affine[:3, 3]


def test_t1_and_t2_are_on_different_grids_but_align_in_world_space(cohort):
    _, _, entries = cohort
    for entry in entries[:4]:
        t1, t2 = nib.load(entry["t1"]), nib.load(entry["t2"])
        assert t1.shape != t2.shape or not np.allclose(t1.affine, t2.affine)
        assert nib.aff2axcodes(t1.affine) != nib.aff2axcodes(t2.affine) or t1.header.get_zooms() != t2.header.get_zooms()
        assert np.linalg.norm(_world_centroid(t1) - _world_centroid(t2)) < 4.0  # mm


def test_lesions_are_present_in_most_sessions_and_have_ms_contrast(cohort):
    _, table, entries = cohort
    volumes = []
    brighter_t2, darker_t1 = [], []
    for entry in entries:
        t1_image, mask_image = nib.load(entry["t1"]), nib.load(entry["lesion"])
        mask = np.asanyarray(mask_image.dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.shape == t1_image.shape and np.allclose(mask_image.affine, t1_image.affine)
        volumes.append(int(mask.sum()))
        if mask.sum() >= 5:
            tissue = np.asanyarray(nib.load(entry["tissue"]).dataobj)
            t1 = np.asanyarray(t1_image.dataobj)
            t2 = np.asanyarray(nib.processing.resample_from_to(nib.load(entry["t2"]), t1_image, order=1).dataobj)
            wm = tissue == 3
            darker_t1.append(t1[mask > 0].mean() < t1[wm].mean())
            brighter_t2.append(t2[mask > 0].mean() > t2[wm].mean())
    assert sum(v > 0 for v in volumes) >= 0.6 * len(volumes)
    assert np.mean(brighter_t2) > 0.8 and np.mean(darker_t1) > 0.8


def test_same_seed_same_cohort_and_a_non_empty_folder_is_refused(tmp_path):
    a = generate_cohort(tmp_path / "a", subjects=1, seed=7, tiny=True, workers=1)
    b = generate_cohort(tmp_path / "b", subjects=1, seed=7, tiny=True, workers=1)
    c = generate_cohort(tmp_path / "c", subjects=1, seed=8, tiny=True, workers=1)
    name = "T2/sub-01-01_T2_preprocessed.nii.gz"
    first, second, other = (np.asanyarray(nib.load(s.out_dir / name).dataobj) for s in (a, b, c))
    np.testing.assert_array_equal(first, second)
    assert first.shape != other.shape or not np.array_equal(first, other)
    with pytest.raises(FileExistsError, match="not empty"):
        generate_cohort(tmp_path / "a", subjects=1, seed=7, tiny=True, workers=1)


def test_cli_writes_a_bids_cohort_with_preview(tmp_path, capsys):
    out = tmp_path / "bids"
    assert main(["synth", "--out", str(out), "--subjects", "1", "--tiny", "--layout", "bids", "--preview", "--workers", "1", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "participants.tsv").is_file() and (out / "preview.png").stat().st_size > 1000
    assert list(out.glob("sub-*/ses-*/anat/*_T1w.nii.gz")) and list(out.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))
    assert list(out.glob("derivatives/lesions/sub-*/ses-*/anat/*_label-lesion_mask.nii.gz"))
    assert main(["synth", "--out", str(out), "--subjects", "1", "--tiny"]) == 1  # not empty: refused
