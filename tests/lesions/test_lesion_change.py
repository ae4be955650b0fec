"""Lesion change between visits: registration, the matching rule, the per-pair pipeline (tiny volumes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from monai_ms.engines.inference.batch import BatchInferenceError
from monai_ms.io import sha256_file
from monai_ms.lesions.change import LesionChangePipeline, pair_sessions
from monai_ms.lesions.matching import CHANGE_CODES, change_map, link_lesions, match_lesions
from monai_ms.lesions.registration import resample_to, rigid_register, rotation_angle_deg

SHAPE = (40, 40, 40)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -39.0  # centred on the world origin


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    x, y, z = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rigid(degrees: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(degrees)
    matrix[:3, 3] = shift_mm
    return matrix


def _head(seed: int = 0) -> np.ndarray:
    """A smooth textured ellipsoidal 'head' (float32, SHAPE)."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 3)
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij"))
    inside = ((grid / np.array([16, 18, 15])[:, None, None, None]) ** 2).sum(0) <= 1
    return np.where(inside, 1.0 + 0.3 * texture / texture.std(), 0.0).astype(np.float32)


def _ball(centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).reshape(3, -1)
    world = AFFINE[:3, :3] @ ijk + AFFINE[:3, 3:4]
    return (np.linalg.norm(world - np.asarray(centre_mm)[:, None], axis=0) <= radius_mm).reshape(SHAPE)


# ------------------------------------------------------------------------------------------ registration
def test_rigid_registration_recovers_a_known_transform():
    """Tolerance: rotation within 0.5 degrees, every point of the head's box within 0.5 mm (voxels are 2 mm)."""
    fixed = _head()
    truth = _rigid((4.0, -3.0, 5.0), (3.0, -2.0, 4.0))  # baseline world -> follow-up world
    moving = resample_to(fixed, AFFINE, (SHAPE, AFFINE), np.linalg.inv(truth))
    result = rigid_register((fixed, AFFINE), (moving, AFFINE), threads=2)
    assert result.kind == "rigid"
    assert rotation_angle_deg(np.linalg.inv(truth) @ result.matrix) < 0.5
    corners = np.array(np.meshgrid([-32, 32], [-36, 36], [-30, 30], indexing="ij")).reshape(3, -1)
    found = result.matrix[:3, :3] @ corners + result.matrix[:3, 3:4]
    expected = truth[:3, :3] @ corners + truth[:3, 3:4]
    assert np.linalg.norm(found - expected, axis=0).max() < 0.5
    # the identity is what the naive baseline assumes: 5+ degrees and 5 mm away from the truth
    assert rotation_angle_deg(truth) > 5.0


# ------------------------------------------------------------------------------------------ matching rule
def _labels(*blobs: tuple[slice, slice, slice]) -> np.ndarray:
    labels = np.zeros((24, 24, 24), dtype=np.int32)
    for value, blob in enumerate(blobs, start=1):
        labels[blob] = value
    return labels


def test_matching_rule_on_hand_made_masks():
    s = slice
    baseline = _labels(
        (s(1, 4), s(1, 4), s(1, 4)),  # 1: stable (27 -> 27 voxels, shifted by one voxel)
        (s(8, 10), s(1, 3), s(1, 3)),  # 2: enlarging (8 -> 27 voxels)
        (s(14, 16), s(1, 3), s(1, 3)),  # 3 and 4: merge into one
        (s(17, 19), s(1, 3), s(1, 3)),
        (s(1, 9), s(10, 12), s(10, 12)),  # 5: splits into two
        (s(20, 22), s(20, 22), s(20, 22)),  # 6: resolved
    )
    followup = _labels(
        (s(2, 5), s(1, 4), s(1, 4)),  # 1 (overlap 18 of 27)
        (s(8, 11), s(1, 4), s(1, 4)),  # 2 enlarged
        (s(14, 19), s(1, 3), s(1, 3)),  # 3: the merged lesion
        (s(1, 4), s(10, 12), s(10, 12)),  # 4 and 5: the split parts
        (s(6, 9), s(10, 12), s(10, 12)),
        (s(12, 15), s(18, 21), s(18, 21)),  # 6: new
    )
    table = match_lesions(baseline, followup, np.eye(4))
    by_class = {row.change: row for row in table.itertuples()}
    assert sorted(table["change"]) == sorted(["stable", "enlarging", "merged", "split", "resolved", "new"])
    assert by_class["merged"].baseline_labels == "3;4" and by_class["merged"].followup_labels == "3"
    assert by_class["split"].baseline_labels == "5" and by_class["split"].followup_labels == "4;5"
    assert by_class["enlarging"].volume_ratio == pytest.approx(27 / 8)
    assert by_class["new"].baseline_volume_ml == 0 and np.isnan(by_class["new"].volume_ratio)
    assert by_class["resolved"].followup_volume_ml == 0
    # the merged lesion grew from 8 + 8 to 20 voxels: +25%, below the 50% rule
    assert by_class["merged"].volume_change == "stable"
    assert table["new_or_enlarging"].sum() == 2
    # centroid of the new lesion (voxels 12-14, 18-20, 18-20) in world mm (identity affine)
    assert (by_class["new"].centroid_x_mm, by_class["new"].centroid_y_mm) == (13.0, 19.0)
    codes = change_map(baseline, followup, table)
    assert codes[13, 19, 19] == CHANGE_CODES["new"] and codes[21, 21, 21] == CHANGE_CODES["resolved"]
    assert codes[9, 2, 2] == CHANGE_CODES["enlarging"] and codes[0, 0, 0] == 0


def test_overlap_rule_and_growth_threshold():
    baseline = np.zeros((12, 12, 12), dtype=np.int32)
    followup = np.zeros_like(baseline)
    baseline[0:10, 0:2, 0:2] = 1  # 40 voxels
    followup[9:11, 0:2, 0:2] = 1  # 8 voxels, sharing 4: 50% of the smaller one -> linked
    assert link_lesions(baseline, followup) == [([1], [1])]
    assert link_lesions(baseline, followup, overlap=0.6) == [([], [1]), ([1], [])]
    # +50% exactly is enlarging; +1 voxel on a 2-voxel lesion is not (below two voxels of change)
    small_b, small_f = np.zeros_like(baseline), np.zeros_like(baseline)
    small_b[0, 0, 0:2] = 1
    small_f[0, 0, 0:3] = 1
    assert match_lesions(small_b, small_f, np.eye(4))["change"].tolist() == ["stable"]
    assert match_lesions(small_b, small_f, np.eye(4), min_change_mm3=1.0)["change"].tolist() == ["enlarging"]
    with pytest.raises(ValueError, match="one grid"):
        match_lesions(baseline, followup[:5], np.eye(4))


# ------------------------------------------------------------------------------------------ pipeline
def _write(path: Path, data: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return str(path)


def _cohort(root: Path) -> tuple[list[dict], np.ndarray]:
    """P1: two visits 1.5 years apart, head moved by 4 degrees and 8 mm, one lesion grown, one new;
    P2: one visit."""
    head = _head()
    stable = [((-12.0, -10.0, 4.0), 4.0), ((10.0, 12.0, -6.0), 4.0)]
    grown, new = ((12.0, -14.0, 6.0), 3.0), ((-8.0, 16.0, -8.0), 4.0)
    baseline_mask = np.zeros(SHAPE, bool)
    for centre, radius in [*stable, grown]:
        baseline_mask |= _ball(centre, radius)
    followup_mask = np.zeros(SHAPE, bool)
    for centre, radius in [*stable, (grown[0], 5.5), new]:
        followup_mask |= _ball(centre, radius)
    baseline_t1 = np.where(baseline_mask, 0.4, head).astype(np.float32)
    followup_content = np.where(followup_mask, 0.4, head).astype(np.float32)
    truth = _rigid((2.0, -2.0, 3.0), (6.0, -4.0, 3.0))
    followup_t1 = resample_to(followup_content, AFFINE, (SHAPE, AFFINE), np.linalg.inv(truth))
    followup_on_grid = resample_to(followup_mask.astype(np.float32), AFFINE, (SHAPE, AFFINE), np.linalg.inv(truth)) >= 0.5
    entries = [
        {"subject": "P1", "session": "P1-b", "scan_date": "2021-07-01", "t1": _write(root / "P1b_T1.nii.gz", followup_t1),
         "lesion": _write(root / "P1b_lesion.nii.gz", followup_on_grid.astype(np.uint8))},
        {"subject": "P1", "session": "P1-a", "scan_date": "2020-01-01", "t1": _write(root / "P1a_T1.nii.gz", baseline_t1),
         "lesion": _write(root / "P1a_lesion.nii.gz", baseline_mask.astype(np.uint8))},
        {"subject": "P2", "session": "P2-a", "scan_date": "2020-03-01", "t1": _write(root / "P2a_T1.nii.gz", head),
         "lesion": _write(root / "P2a_lesion.nii.gz", np.zeros(SHAPE, np.uint8))},
    ]
    return entries, truth


def _temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def test_pairs_in_date_order_and_unpaired_subjects():
    entries = [
        {"subject": "P1", "session": "s2", "scan_date": "2021-01-01"},
        {"subject": "P1", "session": "s1", "scan_date": "2020-01-01"},
        {"subject": "P1", "session": "s3", "scan_date": "2022-01-01"},
        {"subject": "P2", "session": "t1", "age": 40.0},
    ]
    pairs, unpaired = pair_sessions(entries)
    assert [p["pair"] for p in pairs] == ["s1__s2", "s2__s3"]
    assert unpaired == [{"subject": "P2", "session": "t1", "status": "unpaired", "reason": "one session"}]
    with pytest.raises(ValueError, match="session s9 of subject P3: needs scan_date"):
        pair_sessions([{"subject": "P3", "session": "s8", "age": 30.0}, {"subject": "P3", "session": "s9"}])


def test_change_pipeline_outputs_unpaired_and_naive_baseline(tmp_path):
    entries, _ = _cohort(tmp_path / "data")
    out = tmp_path / "change"
    summary = LesionChangePipeline(entries, out, location=False, threads=2, progress=False).run()
    assert list(summary["status"]) == ["ok", "unpaired"]
    assert summary.loc[1, "subject"] == "P2" and summary.loc[1, "baseline"] == "P2-a"
    ok = summary.iloc[0]
    assert ok["pair"] == "P1-a__P1-b" and ok["interval_days"] == 547.0
    assert (ok["n_new"], ok["n_enlarging"], ok["n_stable"], ok["n_resolved"]) == (1, 1, 2, 0)
    assert abs(ok["rotation_deg"] - rotation_angle_deg(_rigid((2.0, -2.0, 3.0), (0, 0, 0)))) < 0.5
    on_disk = pd.read_csv(out / "lesion_change.csv")
    assert list(on_disk["status"]) == ["ok", "unpaired"]
    table = pd.read_csv(out / "pairs" / "P1-a__P1-b_change.csv")
    new = table[table["change"] == "new"].iloc[0]
    assert np.allclose([new.centroid_x_mm, new.centroid_y_mm, new.centroid_z_mm], (-8, 16, -8), atol=1.5)
    change_map_image = nib.load(str(out / "pairs" / "P1-a__P1-b_change_map.nii.gz"))
    assert np.allclose(change_map_image.affine, AFFINE) and change_map_image.shape == SHAPE
    voxel = tuple(np.linalg.solve(AFFINE, [-8, 16, -8, 1])[:3].round().astype(int))
    assert np.asanyarray(change_map_image.dataobj)[voxel] == CHANGE_CODES["new"]
    assert (out / "qc" / "P1-a__P1-b_qc.png").stat().st_size > 1000
    assert len(pd.read_csv(out / "lesion_change_table.csv")) == len(table)
    assert not _temporary_files(out)
    # the naive baseline (no registration): the 8 mm move turns unchanged lesions into new + resolved
    naive = LesionChangePipeline(entries, tmp_path / "naive", register=False, location=False, progress=False).run()
    assert naive.iloc[0]["n_new"] >= 2 and naive.iloc[0]["registration"] == "identity"


def test_reruns_skip_finished_pairs_and_redo_interrupted_ones(tmp_path, monkeypatch):
    import monai_ms.lesions.change as change

    entries, _ = _cohort(tmp_path / "data")
    out = tmp_path / "change"
    # an interrupted write (the QC picture fails): no complete record, no temporary file left behind
    real_save = change.save_figure

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(change, "save_figure", failing)
    with pytest.raises(BatchInferenceError, match="P1-a__P1-b: OSError: disk full"):
        LesionChangePipeline(entries, out, location=False, progress=False).run()
    assert pd.read_csv(out / "lesion_change.csv")["status"].tolist() == ["failed", "unpaired"]
    assert not _temporary_files(out)
    monkeypatch.setattr(change, "save_figure", real_save)

    first = LesionChangePipeline(entries, out, location=False, progress=False)
    assert [e["pair"] for e in first.records.pending()] == ["P1-a__P1-b"]  # the failed pair is redone
    first.run()
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".csv", ".gz", ".png", ".json"))
    stamps = {p: p.stat().st_mtime_ns for p in files if p.parent.name != out.name}

    again = LesionChangePipeline(entries, out, location=False, progress=False)
    assert again.records.pending() == []
    calls = []
    monkeypatch.setattr(again, "run_pair", lambda pair: calls.append(pair))
    summary = again.run()
    assert calls == [] and summary["status"].tolist() == ["ok", "unpaired"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a replaced input (the follow-up mask) or other settings make the pair pending again
    mask = Path(entries[0]["lesion"])
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    assert len(LesionChangePipeline(entries, out, location=False, progress=False).records.pending()) == 1
    assert len(LesionChangePipeline(entries, out, location=False, enlarging_ratio=2.0, progress=False).records.pending()) == 1


def test_longitudinal_bundle_config_runs_the_change_pipeline(tmp_path):
    from monai.bundle import ConfigParser

    from monai_ms.data.manifest import write_manifest

    entries, _ = _cohort(tmp_path / "data")
    for entry in entries:
        entry.update(age=40.0, sex="F")
    manifest = tmp_path / "manifest.json"
    write_manifest({"training": entries, "validation": [], "testing": []}, manifest)
    configs = Path(__file__).resolve().parents[2] / "bundles" / "lesion_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "longitudinal.json")])
    parser.update({"data_manifest": str(manifest), "output_dir": str(tmp_path / "eval"), "location": False})
    summary = parser.get_parsed_content("change#pipeline").run()
    assert summary["status"].tolist() == ["ok", "unpaired"]
    assert (tmp_path / "eval" / "lesion_change" / "lesion_change.csv").is_file()
    # both tables carry the manifest's SHA-256, the splits and the settings they were made with
    for table in ("lesion_change", "lesion_change_table"):
        sidecar = json.loads((tmp_path / "eval" / "lesion_change" / f"{table}.provenance.json").read_text())
        assert sidecar["rows"] == len(pd.read_csv(tmp_path / "eval" / "lesion_change" / f"{table}.csv"))
        record = sidecar["provenance"]
        assert record["manifest_sha256"] == sha256_file(manifest) and record["splits"] == ["training", "validation", "testing"]
        assert record["masks"] == "manifest" and record["mask_model"] is None
        assert record["settings"]["location"] is False and record["settings"]["register"] is True


def test_cli_records_the_mask_models_provenance(tmp_path):
    """Masks of a lesion_seg inference: the change tables name that model's checkpoint."""
    import shutil

    from monai_ms.cli import main
    from monai_ms.data.manifest import write_manifest

    entries, _ = _cohort(tmp_path / "data")
    masks = tmp_path / "inference"
    masks.mkdir()
    for entry in entries:
        shutil.copy(entry["lesion"], masks / f"{entry['session']}_lesion_mask.nii.gz")
        entry.pop("lesion")
        entry.update(age=40.0, sex="F")
    (masks / "lesions.provenance.json").write_text(json.dumps({"table": "lesions.csv", "provenance": {"checkpoint_sha256": "ab" * 32}}))
    manifest = tmp_path / "manifest.json"
    write_manifest({"training": entries, "validation": [], "testing": []}, manifest)
    out = tmp_path / "change"
    args = ["lesion-change", str(manifest), "--output_dir", str(out), "--masks_dir", str(masks), "--no_location", "--no_qc"]
    assert main(args) == 0
    record = json.loads((out / "lesion_change.provenance.json").read_text())["provenance"]
    assert record["mask_model"] == {"checkpoint_sha256": "ab" * 32} and record["masks"] == str(masks.resolve())
    assert record["manifest_sha256"] == sha256_file(manifest) and record["settings"]["masks"] == str(masks.resolve())


def test_cli_bad_manifest_is_one_line_and_exit_1(tmp_path, capsys):
    from monai_ms.cli import main

    assert main(["lesion-change", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "missing.json" in error[0]
