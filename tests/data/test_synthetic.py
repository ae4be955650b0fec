"""The synthetic cohort on the real MNI template: files, labels, alignment, lesions, determinism."""

from __future__ import annotations

import json
import re
from datetime import date

import matplotlib.image
import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from monai_ms.cli import main
from monai_ms.data import read_manifest
from monai_ms.data.synthetic import GROUND_TRUTH_COLUMNS, generate_cohort, sample_latents

SEED_COLUMNS = [
    "Patient_ID", "MRI_ID", "MR_System", "Number_of_Lesions", "Scan_Date", "Sex", "Date_of_Birth", "EDSS", "Age_at_Scan"
]


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


def test_seed_layout_table_and_files(cohort):
    folder, table, entries = cohort
    assert list(table.columns) == SEED_COLUMNS
    assert table["MRI_ID"].is_unique and len(table) == len(entries)
    assert table["EDSS"].between(0, 10).all() and (table["EDSS"] * 2 == (table["EDSS"] * 2).round()).all()
    assert table["Age_at_Scan"].between(18, 80).all() and set(table["Sex"]) <= {"F", "M"}
    assert (table.groupby("Patient_ID")["MRI_ID"].count() > 1).any()  # some patients have two sessions
    for mri_id in table["MRI_ID"]:
        images = (f"T1/{mri_id}_T1_preprocessed.nii.gz", f"T2/{mri_id}_T2_preprocessed.nii.gz")
        for path in (*images, f"masks/{mri_id}_lesion.nii.gz", f"tissue/{mri_id}_tissue.nii.gz"):
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
        assert nib.aff2axcodes(t1.affine) != nib.aff2axcodes(t2.affine)
        assert t1.header.get_zooms() != t2.header.get_zooms()
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
    options = ["--tiny", "--layout", "bids", "--preview", "--workers", "1", "--seed", "3"]
    assert main(["synth", "--out", str(out), "--subjects", "1", *options]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "participants.tsv").is_file()
    picture = matplotlib.image.imread(out / "preview.png")  # a real PNG: one row of T1 | T2 | T1 + mask
    assert picture.shape[1] > 600 and picture.shape[1] > picture.shape[0]
    assert list(out.glob("sub-*/ses-*/anat/*_T1w.nii.gz")) and list(out.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))
    assert list(out.glob("derivatives/lesions/sub-*/ses-*/anat/*_label-lesion_mask.nii.gz"))
    assert main(["synth", "--out", str(out), "--subjects", "1", "--tiny"]) == 1  # not empty: refused


@pytest.fixture(scope="module")
def own_cohort(tmp_path_factory):
    """12 tiny subjects (seed 7: 6 men, 2 lesion-free sessions, 4 follow-ups), made in this process."""
    return generate_cohort(tmp_path_factory.mktemp("own") / "cohort", subjects=12, seed=7, tiny=True, workers=1)


def test_sessions_and_patients_are_consistent(own_cohort):
    table = pd.read_csv(own_cohort.out_dir / "metadata.csv")
    assert len(table) == own_cohort.sessions and table["Patient_ID"].nunique() == own_cohort.subjects == 12
    for _, row in table.iterrows():
        patient, session = re.fullmatch(r"sub-(\d{2})-(\d{2})", row["MRI_ID"]).groups()
        assert row["Patient_ID"] == f"P{patient}"
        age = (date.fromisoformat(row["Scan_Date"]) - date.fromisoformat(row["Date_of_Birth"])).days / 365.25
        assert row["Age_at_Scan"] == pytest.approx(age, abs=0.06)
        assert 18 <= row["Age_at_Scan"] <= 70 and row["MR_System"] in ("1.5T", "3T")
    for _, sessions in table.groupby("Patient_ID"):
        assert sessions["Sex"].nunique() == 1 and sessions["Date_of_Birth"].nunique() == 1
        numbers = sorted(int(m[-2:]) for m in sessions["MRI_ID"])
        assert numbers == list(range(1, len(numbers) + 1))
        if len(sessions) == 2:  # the follow-up is 1-3 years later
            first, second = sessions.sort_values("MRI_ID").itertuples()
            years = (date.fromisoformat(second.Scan_Date) - date.fromisoformat(first.Scan_Date)).days / 365.25
            assert 0.99 <= years <= 3.01


def test_ground_truth_matches_metadata_and_masks(own_cohort):
    folder = own_cohort.out_dir
    table, truth = pd.read_csv(folder / "metadata.csv"), pd.read_csv(folder / "ground_truth.csv")
    assert list(truth.columns) == GROUND_TRUTH_COLUMNS
    assert truth["MRI_ID"].tolist() == table["MRI_ID"].tolist()
    assert truth["edss"].tolist() == table["EDSS"].tolist()
    assert truth["number_of_lesions"].tolist() == table["Number_of_Lesions"].tolist()
    for row in truth.itertuples():
        mask = nib.load(folder / f"masks/{row.MRI_ID}_lesion.nii.gz")
        voxel_ml = np.prod(mask.header.get_zooms()) / 1000
        assert np.asanyarray(mask.dataobj).sum() * voxel_ml == pytest.approx(row.lesion_mask_volume_ml, abs=1e-3)
    # some sessions are lesion-free, most are not
    empty = (truth["lesion_mask_volume_ml"] == 0).sum()
    assert 0 < empty <= len(truth) // 2 and own_cohort.lesion_free_sessions == empty
    assert 10 < truth["ventricle_volume_ml"].min() and truth["ventricle_volume_ml"].max() < 90
    assert (truth["brain_parenchymal_fraction"].between(0.7, 0.95)).all()


def test_t2_is_lps_with_thick_slices_and_t1_is_isotropic_ras(own_cohort):
    folder = own_cohort.out_dir
    t1 = nib.load(folder / "T1/sub-01-01_T1_preprocessed.nii.gz")
    t2 = nib.load(folder / "T2/sub-01-01_T2_preprocessed.nii.gz")
    assert nib.aff2axcodes(t1.affine) == ("R", "A", "S") and nib.aff2axcodes(t2.affine) == ("L", "P", "S")
    assert t1.header.get_zooms() == (4.0, 4.0, 4.0) and t2.header.get_zooms() == (4.0, 4.0, 6.0)
    assert t1.get_data_dtype() == np.float32 and t2.get_data_dtype() == np.float32
    tissue = np.asanyarray(nib.load(folder / "tissue/sub-01-01_tissue.nii.gz").dataobj)
    assert tissue.dtype == np.uint8 and set(np.unique(tissue)) <= {0, 1, 2, 3, 4}
    assert ((np.asanyarray(t1.dataobj) > 0) == (tissue > 0)).all()  # skull-stripped: zero exactly outside the brain
    for path in sorted(folder.glob("T[12]/*.nii.gz")):  # every brain lies inside its field of view
        data = np.asanyarray(nib.load(path).dataobj)
        faces = [data[0], data[-1], data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1]]
        assert not any(face.any() for face in faces), path.name


def test_men_have_larger_heads_on_average(own_cohort):
    truth = pd.read_csv(own_cohort.out_dir / "ground_truth.csv")
    volume = {}
    for row in truth.itertuples():
        image = nib.load(own_cohort.out_dir / f"T1/{row.MRI_ID}_T1_preprocessed.nii.gz")
        volume[row.MRI_ID] = (np.asanyarray(image.dataobj) > 0).sum() * np.prod(image.header.get_zooms()) / 1000
    truth["brain_ml"] = truth["MRI_ID"].map(volume)
    means = truth.groupby("sex")["brain_ml"].mean()
    assert means["M"] > 1.08 * means["F"]  # expected ratio 1.06^3 = 1.19
    assert 1200 < means["F"] < 1900


def test_a_subject_does_not_depend_on_cohort_size_or_worker_count(cohort):
    folder, _, _ = cohort
    parameters = json.loads((folder / "cohort.json").read_text())["parameters"]  # made with up to 2 workers
    assert parameters["subjects"] < 100  # the same zero-padding width as below
    small = generate_cohort(
        folder.parent / "small", subjects=2, seed=parameters["seed"], spacing=parameters["spacing"],
        tiny=parameters["tiny"], workers=1,
    )
    names = ["T1/sub-01-01_T1_preprocessed.nii.gz", "T2/sub-02-01_T2_preprocessed.nii.gz"]
    for name in [*names, "masks/sub-01-01_lesion.nii.gz"]:
        big, one = nib.load(folder / name), nib.load(small.out_dir / name)
        np.testing.assert_array_equal(big.affine, one.affine)
        assert np.asanyarray(big.dataobj).tobytes() == np.asanyarray(one.dataobj).tobytes()


def test_overwrite_replaces_an_earlier_cohort_but_never_other_data(tmp_path):
    first = generate_cohort(tmp_path / "c", subjects=1, seed=2, tiny=True, workers=1)
    second = generate_cohort(tmp_path / "c", subjects=1, seed=3, tiny=True, workers=1, overwrite=True)
    assert json.loads((second.out_dir / "cohort.json").read_text())["parameters"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no partial or old folder left behind
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "scan.nii.gz").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not a monai-ms synthetic cohort"):
        generate_cohort(precious, subjects=1, tiny=True, workers=1, overwrite=True)
    assert (precious / "scan.nii.gz").read_bytes() == b"user data"
    with pytest.raises(ValueError, match="spacing must be"):
        generate_cohort(tmp_path / "d", subjects=1, spacing=0.1, workers=1)
    with pytest.raises(ValueError, match="layout must be one of seed, bids, got 'nnunet'"):
        generate_cohort(tmp_path / "d", subjects=1, layout="nnunet", workers=1)
    assert not (tmp_path / "d").exists()
    assert first.out_dir == second.out_dir


def test_bids_tables_follow_the_bids_layout(tmp_path):
    out = generate_cohort(tmp_path / "bids", subjects=3, seed=4, tiny=True, workers=1, layout="bids").out_dir
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "sex", "date_of_birth"]
    assert participants["participant_id"].tolist() == ["sub-P01", "sub-P02", "sub-P03"]
    sessions = pd.read_csv(out / "sub-P01" / "sub-P01_sessions.tsv", sep="\t")
    assert list(sessions.columns) == ["session_id", "acq_time", "age", "edss", "scanner"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    for session_id in sessions["session_id"]:
        stem = f"sub-P01_{session_id}"
        assert (out / f"sub-P01/{session_id}/anat/{stem}_T1w.nii.gz").is_file()
        assert (out / f"derivatives/lesions/sub-P01/{session_id}/anat/{stem}_dseg.nii.gz").is_file()
    assert (out / "LICENSE_MNI_ICBM152.txt").is_file() and not (out / "metadata.csv").exists()


def test_edss_is_explained_by_lesions_and_atrophy_not_by_age_and_sex():
    table = sample_latents(300, seed=0)
    table["log_lesion"] = np.log1p(table["lesion_load_ml"])
    table["male"] = (table["sex"] == "M").astype(float)

    def r2(columns):
        x, y = table[columns].to_numpy(), table["edss"].to_numpy()
        return LinearRegression().fit(x, y).score(x, y)

    assert r2(["age", "male"]) < 0.2
    assert r2(["log_lesion", "atrophy"]) > r2(["age", "male"]) + 0.5
    first = table.drop_duplicates("Patient_ID")
    assert 0.6 < (first["sex"] == "F").mean() < 0.8
    assert 0.05 < (table["lesions_generated"] == 0).mean() < 0.2
    assert set(np.unique(table["edss"] * 2) % 1) == {0.0} and table["edss"].between(0, 10).all()
