"""Lesion location classes (rules on hand-made atlas masks), lesion_table's location columns, and the
synthetic generator's per-lesion truth (which must leave every image and table of a seed unchanged)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from monai_ms.engines.metrics.segmentation import label_lesions, lesion_table
from monai_ms.lesions.location import LOCATION_CLASSES, AtlasMaps, classify_location, lesion_locations


def test_classify_location_rules_in_order():
    assert classify_location(0.0, 0.0, 0.6) == "infratentorial"  # first rule wins
    assert classify_location(3.0, 0.0, 0.4) == "periventricular"
    assert classify_location(3.1, 3.0, 0.0) == "juxtacortical"
    assert classify_location(3.1, 3.1, 0.0) == "deep_white_matter"


def _maps() -> AtlasMaps:
    """1 mm grid 40^3: a ventricle block in the middle, a cortex slab at x >= 34, infratentorial z < 6."""
    shape = (40, 40, 40)
    ventricles = np.zeros(shape, bool)
    ventricles[16:24, 16:24, 16:24] = True
    cortex = np.zeros(shape, bool)
    cortex[34:, :, 6:] = True
    infratentorial = np.zeros(shape, bool)
    infratentorial[:, :, :6] = True
    return AtlasMaps(ventricles, cortex, infratentorial, np.eye(4))


def _mask() -> np.ndarray:
    mask = np.zeros((40, 40, 40), bool)
    mask[25:28, 18:21, 18:21] = True  # 27 voxels, 2 mm from the ventricle: periventricular
    mask[30:32, 5:7, 20:22] = True  # 8 voxels, 3 mm from the cortex (x = 31 -> 34): juxtacortical
    mask[8:10, 30:32, 1:3] = True  # 8 voxels below z = 6: infratentorial
    mask[5:9, 5:9, 30:33] = True  # 48 voxels far from everything: deep white matter
    return mask


def test_lesion_locations_on_hand_made_atlas():
    labels, count = label_lesions(_mask(), spacing=1.0, min_volume_mm3=3.0)
    located = lesion_locations(labels, count, _maps())
    by_size = dict(zip(np.bincount(labels.ravel())[1:], located.itertuples()))
    assert by_size[27].location == "periventricular" and by_size[27].ventricle_distance_mm == 2.0
    assert by_size[48].location == "deep_white_matter" and by_size[48].cortex_distance_mm > 20
    classes = sorted(located["location"])
    assert classes == sorted(["periventricular", "juxtacortical", "infratentorial", "deep_white_matter"])
    juxta = located[located["location"] == "juxtacortical"].iloc[0]
    assert juxta.cortex_distance_mm == 3.0
    infra = located[located["location"] == "infratentorial"].iloc[0]
    assert infra.infratentorial_fraction == 1.0
    with pytest.raises(ValueError, match="not on the atlas grid"):
        lesion_locations(labels[:10], count, _maps())


def test_lesion_table_location_columns_follow_the_volume_order():
    plain = lesion_table(_mask(), np.eye(4), "s1")
    table = lesion_table(_mask(), np.eye(4), "s1", location=_maps())
    assert list(table.columns[: len(plain.columns)]) == list(plain.columns)
    assert table[plain.columns].equals(plain)
    assert table["location"].tolist()[:2] == ["deep_white_matter", "periventricular"]  # 48 then 27 voxels
    assert set(table["location"]) == set(LOCATION_CLASSES)
    assert list(lesion_table(np.zeros((4, 4, 4)), np.eye(4), location=_maps()).columns)[-4:] == [
        "location", "ventricle_distance_mm", "cortex_distance_mm", "infratentorial_fraction"
    ]


# ------------------------------------------------------------------------------------------ generator truth
# the tiny test cohort (14 subjects, seed 1, tiny) as written by the generator before lesion_truth.csv existed
# (monai_ms commit 5cd7e96): digests of every NIfTI's voxels + affine, and of the two tables
BEFORE = {
    "images": "0272eb8ddbb4b313d6a630e4db2ea32537ecbba0ee267345b0bd1541225d5dda",
    "ground_truth.csv": "f78bf3cc141353057d02c027de50271538630c201599a566763481d2142da6ec",
    "metadata.csv": "2fb8739d30ec9c627ccf853baf96186a74e43ed75d523e2aeeb334af60269107",
}


def _digests(root: Path) -> dict[str, str]:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.nii.gz")):
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        digest.update(str(path.relative_to(root)).encode())
        digest.update(f"{data.dtype}{data.shape}".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
        digest.update(np.asarray(image.affine, dtype=np.float64).tobytes())
    out = {"images": digest.hexdigest()}
    for name in ("ground_truth.csv", "metadata.csv"):
        out[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    return out


def test_lesion_truth_leaves_images_and_tables_unchanged(tiny_manifest):
    assert _digests(Path(tiny_manifest).parent / "cohort") == BEFORE


def test_lesion_truth_table_tracks_lesions_across_sessions(tiny_manifest):
    cohort = Path(tiny_manifest).parent / "cohort"
    truth = pd.read_csv(cohort / "lesion_truth.csv")
    sessions = pd.read_csv(cohort / "ground_truth.csv")
    # every generated lesion of every session has a row
    assert truth.groupby("MRI_ID").size().reindex(sessions["MRI_ID"], fill_value=0).tolist() == sessions["lesions_generated"].tolist()
    assert set(truth.loc[truth["session"] == 1, "status"]) <= {"baseline"}
    assert set(truth["location"]) <= set(LOCATION_CLASSES)
    follow = truth[truth["session"] == 2]
    assert len(follow) and {"new", "unchanged"} <= set(follow["status"])
    for patient, rows in follow.groupby("Patient_ID"):
        first = truth[(truth["Patient_ID"] == patient) & (truth["session"] == 1)].set_index("lesion_id")
        kept = rows[rows["status"] != "new"].set_index("lesion_id")
        assert list(kept.index) == list(first.index)  # same ids, in the same order; new ones after
        assert (rows[rows["status"] == "new"]["lesion_id"] > len(first)).all()
        assert (kept.loc[kept["status"] == "unchanged", "volume_ml"] == first.loc[kept["status"] == "unchanged", "volume_ml"]).all()
        grown = kept[kept["status"] == "enlarged"]
        assert ((grown["volume_ratio"] >= 1.15 - 1e-3) & (grown["volume_ratio"] <= 1.8 + 1e-3)).all()
        # a lesion's position in the baseline scan is where the baseline rows put it
        assert np.allclose(kept[["baseline_x_mm", "baseline_y_mm", "baseline_z_mm"]], first[["centre_x_mm", "centre_y_mm", "centre_z_mm"]])
    # the centre (world mm) of a lesion that the mask shows lands on or next to a mask voxel
    near = []
    for row in truth[truth["mask_voxels"] >= 3].itertuples():
        image = nib.load(str(cohort / "masks" / f"{row.MRI_ID}_lesion.nii.gz"))
        voxel = np.rint(np.linalg.solve(image.affine, [row.centre_x_mm, row.centre_y_mm, row.centre_z_mm, 1.0])[:3]).astype(int)
        near.append(np.asanyarray(image.dataobj)[tuple(slice(max(v - 1, 0), v + 2) for v in voxel)].any())
    assert len(near) > 20 and np.mean(near) == 1.0


@pytest.mark.slow
def test_atlas_registered_to_a_synthetic_scan_finds_its_ventricles(tiny_manifest):
    from monai_ms.lesions.location import atlas_on_scan

    cohort = Path(tiny_manifest).parent / "cohort"
    t1 = nib.load(str(cohort / "T1" / "sub-02-01_T1_preprocessed.nii.gz"))
    tissue = np.asanyarray(nib.load(str(cohort / "tissue" / "sub-02-01_tissue.nii.gz")).dataobj)
    maps, registration = atlas_on_scan(t1)
    assert registration.kind == "affine" and maps.ventricles.shape == t1.shape
    # most atlas ventricle voxels are the subject's CSF (label 1), most atlas cortex is its grey matter (2)
    assert (tissue[maps.ventricles] == 1).mean() > 0.8
    assert (tissue[maps.cortex] == 2).mean() > 0.6


@pytest.mark.slow
def test_lesion_mask_writer_gives_every_lesion_a_location(tiny_manifest, tmp_path):
    """The inference writer (lesion_seg's ``lesion_location: true``) on a real scan with lesions drawn in its
    white matter next to the ventricles: every row of lesion_table.csv has a class and distances."""
    from monai.data import MetaTensor

    from monai_ms.engines.inference.segmentation import LesionMaskWriter

    cohort = Path(tiny_manifest).parent / "cohort"
    t1_file = cohort / "T1" / "sub-02-01_T1_preprocessed.nii.gz"
    mask = np.asanyarray(nib.load(str(cohort / "masks" / "sub-02-01_lesion.nii.gz")).dataobj) > 0
    if not mask.any():  # the tiny generator may leave this session lesion-free: draw one in white matter
        tissue = np.asanyarray(nib.load(str(cohort / "tissue" / "sub-02-01_tissue.nii.gz")).dataobj)
        centre = np.argwhere(tissue == 3)[len(np.argwhere(tissue == 3)) // 2]
        mask[tuple(slice(c - 1, c + 1) for c in centre)] = True
    writer = LesionMaskWriter(tmp_path, prob_key=None, qc_keys=(), qc_mask_key=None, location=True, min_volume_mm3=1.0)
    t1 = MetaTensor(np.zeros((1, 2, 2, 2), np.float32), meta={"filename_or_obj": str(t1_file)})  # as LoadImaged leaves it
    row = writer.write_scan({"t1": t1, "session": "sub-02-01"}, {"pred": mask[None].astype(np.float32)})
    writer.write()
    table = pd.read_csv(tmp_path / "lesion_table.csv")
    assert len(table) == row["lesion_count"] > 0
    assert set(table["location"]) <= set(LOCATION_CLASSES) and table["location"].notna().all()
    assert (table["ventricle_distance_mm"] >= 0).all() and (table["cortex_distance_mm"] >= 0).all()
