"""Batch inference at cohort scale: one corrupt scan among good ones, error rows, non-zero exit, resume.

Random-weight models (the mechanism is under test, not the model) on the tiny 4 mm cohort, run through
``python -m monai.bundle run inferring`` as users run it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runner import NO_N4, REPO, run_bundle
from monai.bundle import ConfigParser

from monai_ms.data import read_manifest, write_manifest
from monai_ms.data.manifest import ManifestError
from monai_ms.data.transforms import paired_transforms
from monai_ms.engines import FAILED_KEY, BatchInference

BAD = "sub-99-01"
LESION_TINY = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "num_workers": 0, **NO_N4}
EDSS_TINY = {"spacing": [4.0, 4.0, 4.0], "roi_size": [32, 40, 32], "batch_size": 2, "num_workers": 0}


def _new_scans(tiny_manifest: Path, folder: Path) -> tuple[Path, list[str]]:
    """A new-scans manifest: the tiny cohort's test and validation sessions, and a truncated T1 in the middle."""
    manifest = read_manifest(tiny_manifest)
    entries = []
    for entry in manifest["testing"] + manifest["validation"]:
        entry = {k: v for k, v in entry.items() if k not in ("lesion", "tissue", "edss")}
        for key in ("t1", "t2"):
            entry[key] = str((tiny_manifest.parent / entry[key]).resolve())
        entries.append(entry)
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(entries[0]["t1"]).read_bytes()
    (folder / "corrupt_T1.nii.gz").write_bytes(data[: len(data) // 2])  # a copy cut short
    _rescan(entries[0]["t2"], folder / "corrupt_T2.nii.gz")
    bad = {**entries[0], "subject": "P99", "session": BAD, "t1": str(folder / "corrupt_T1.nii.gz"), "t2": str(folder / "corrupt_T2.nii.gz")}
    entries.insert(2, bad)
    write_manifest({"testing": entries}, folder / "new_scans.json")
    return folder / "new_scans.json", [e["session"] for e in entries if e["session"] != BAD]


def _rescan(source: str | Path, target: Path) -> None:
    """``source``'s image at another intensity scale (x 1.000001): not a byte copy, which validation refuses
    as a copy of another session's scan, yet the same network input after z-scoring."""
    image = nib.load(str(source))
    data = np.asanyarray(image.dataobj).astype(np.float32) * np.float32(1.000001)
    nib.save(nib.Nifti1Image(data, image.affine, image.header), str(target))


def _random_checkpoint(bundle: str, folder: Path) -> Path:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    parser["spacing"] = [4.0, 4.0, 4.0]  # the runs' spacing (the EDSS lesion load's voxel volume travels with the weights)
    if bundle == "lesion_seg":
        # an untrained network with the default lesion prior (0.01) finds no lesion; at 0.5 it finds many,
        # which the lesion tables below need
        parser["network_def#prior_probability"] = None
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def scans(tiny_manifest, tmp_path_factory) -> tuple[Path, list[str]]:
    return _new_scans(tiny_manifest, tmp_path_factory.mktemp("new_scans"))


def _mtimes(paths: list[Path]) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in paths}


@pytest.mark.slow
def test_lesion_seg_reports_the_corrupt_scan_and_a_rerun_redoes_only_what_is_missing(scans, tmp_path):
    manifest, good = scans
    out = tmp_path / "lesions"
    overrides = {**LESION_TINY, "data_manifest": str(manifest), "ckpt_dir": str(_random_checkpoint("lesion_seg", tmp_path / "models")),
                 "inference_dir": str(out)}
    first = run_bundle("lesion_seg", "inferring", ["train", "inference"], overrides)
    assert first.returncode == 1
    assert f"{BAD}: t1 " in first.stderr and "corrupt_T1.nii.gz" in first.stderr and "Traceback" not in first.stderr
    outputs = [out / f"{s}_lesion_mask.nii.gz" for s in good] + [out / f"{s}_lesion_prob.nii.gz" for s in good]
    assert all(path.is_file() for path in outputs) and all((out / "qc" / f"{s}_qc.png").is_file() for s in good)
    assert not list(out.glob(f"{BAD}*"))
    table = pd.read_csv(out / "lesions.csv").set_index("session")
    assert sorted(table.index) == sorted([*good, BAD])
    assert "corrupt_T1.nii.gz" in table.loc[BAD, "error"] and table.loc[good, "error"].isna().all()
    assert table.loc[good, "lesion_count"].notna().all() and pd.isna(table.loc[BAD, "mask_file"])

    # a good scan's mask lost: the same command redoes that scan (and the failed one), nothing else
    (out / f"{good[0]}_lesion_mask.nii.gz").unlink()
    before = _mtimes([p for p in outputs if good[0] not in p.name])
    second = run_bundle("lesion_seg", "inferring", ["train", "inference"], overrides)
    assert second.returncode == 1 and f"{BAD}: t1 " in second.stderr
    assert f"skipped {len(good) - 1} with complete outputs" in second.stdout + second.stderr
    assert (out / f"{good[0]}_lesion_mask.nii.gz").is_file()
    assert _mtimes([p for p in outputs if good[0] not in p.name]) == before
    rerun = pd.read_csv(out / "lesions.csv").set_index("session")
    assert rerun.index.tolist() == table.index.tolist()  # every session, in manifest order
    pd.testing.assert_frame_equal(rerun.loc[good[1:]], table.loc[good[1:]])
    lesions = pd.read_csv(out / "lesion_table.csv")
    assert set(lesions["session"]) <= set(good) and good[0] in set(lesions["session"])


@pytest.mark.slow
def test_edss_error_row_then_a_fixed_scan_is_redone_and_the_run_succeeds(scans, tmp_path):
    manifest, good = scans
    scans_dir = tmp_path / "scans"
    manifest, good = _new_scans_copy(manifest, scans_dir)
    csv = tmp_path / "out" / "predictions.csv"
    overrides = {**EDSS_TINY, "data_manifest": str(manifest), "ckpt_dir": str(_random_checkpoint("edss", tmp_path / "models")),
                 "predictions_csv": str(csv)}
    first = run_bundle("edss", "inferring", ["train", "inference"], overrides)
    assert first.returncode == 1 and BAD in first.stderr and "Traceback" not in first.stderr
    table = pd.read_csv(csv).set_index("session")
    assert table.index.tolist()[2] == BAD and sorted(table.index) == sorted([*good, BAD])
    assert table.loc[good, "edss_pred"].notna().all() and pd.isna(table.loc[BAD, "edss_pred"])
    assert "corrupt_T1.nii.gz" in table.loc[BAD, "error"]

    # the user replaces the corrupt file and reruns the same command: only that scan is computed
    records = sorted((tmp_path / "out" / "predictions_sessions").glob("*.json"))
    before = _mtimes([r for r in records if r.stem != BAD])
    entry = next(e for e in read_manifest(manifest)["testing"] if e["session"] == good[0])
    _rescan(entry["t1"], scans_dir / "corrupt_T1.nii.gz")
    second = run_bundle("edss", "inferring", ["train", "inference"], overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _mtimes([r for r in records if r.stem != BAD]) == before
    fixed = pd.read_csv(csv).set_index("session")
    assert "error" not in fixed.columns and fixed["edss_pred"].notna().all()
    assert fixed.index.tolist() == table.index.tolist()
    pd.testing.assert_series_equal(fixed.loc[good, "edss_pred"], table.loc[good, "edss_pred"])
    # the bad session got the good session's images: the same prediction
    assert fixed.loc[BAD, "edss_pred"] == pytest.approx(fixed.loc[good[0], "edss_pred"], rel=1e-5)

    # everything complete: a third run computes nothing and still writes the whole table
    records = sorted((tmp_path / "out" / "predictions_sessions").glob("*.json"))
    before = _mtimes(records)
    third = run_bundle("edss", "inferring", ["train", "inference"], overrides)
    assert third.returncode == 0 and f"skipped {len(good) + 1} with complete outputs" in third.stdout + third.stderr
    assert _mtimes(records) == before
    pd.testing.assert_frame_equal(pd.read_csv(csv).set_index("session"), fixed)


def _new_scans_copy(manifest: Path, folder: Path) -> tuple[Path, list[str]]:
    """The fixture's manifest with its corrupt files copied into ``folder`` (this test repairs them)."""
    content = read_manifest(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in content["testing"]:
        if entry["session"] == BAD:
            for key in ("t1", "t2"):
                entry[key] = str(shutil.copy(entry[key], folder / Path(entry[key]).name))
    write_manifest(content, folder / "new_scans.json")
    return folder / "new_scans.json", [e["session"] for e in content["testing"] if e["session"] != BAD]


def test_a_file_gone_after_validation_becomes_an_error_item(scans, tmp_path):
    manifest, good = scans
    entries = [e for e in read_manifest(manifest)["testing"] if e["session"] in good[:2]]
    moved = tmp_path / "vanishing_T2.nii.gz"
    shutil.copy(entries[1]["t2"], moved)
    entries[1]["t2"] = str(moved)
    write_manifest({"testing": entries}, tmp_path / "two.json")
    batch = BatchInference(entries, tmp_path / "sessions", progress=False)
    assert batch.validate(tmp_path / "two.json", task="edss_inference") and not batch.failures
    moved.unlink()  # disappears between validation and loading
    dataset = batch.dataset(paired_transforms(stage="infer", spacing=[4.0, 4.0, 4.0], roi_size=[32, 40, 32], demographics=True))
    item = dataset[1]
    assert item["session"] == good[1] and item[FAILED_KEY].startswith(f"t2 {moved}:")
    collated = batch.collate([dataset[0], item])
    assert collated["session"] == [good[0]] and collated["t1"].shape[0] == 1
    assert collated[FAILED_KEY] == [(good[1], item[FAILED_KEY])]


def test_structural_problems_still_stop_and_complete_sessions_are_judged_by_files_model_and_settings(scans, tmp_path):
    manifest, good = scans
    entries = [e for e in read_manifest(manifest)["testing"] if e["session"] in good[:2]]
    write_manifest({"testing": [{k: v for k, v in e.items() if k != "age"} for e in entries]}, tmp_path / "no_age.json")
    with pytest.raises(ManifestError, match=f"session {good[0]}: missing key age"):
        BatchInference(entries, tmp_path / "x").validate(tmp_path / "no_age.json", task="edss_inference")
    with pytest.raises(ValueError, match="appears twice"):
        BatchInference(entries + entries[:1], tmp_path / "x")

    scan = Path(shutil.copy(entries[0]["t1"], tmp_path / "scan_T1.nii.gz"))
    entries[0]["t1"] = str(scan)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"result")
    first = BatchInference(entries, tmp_path / "sessions", model_files=[model], settings={"spacing": 4.0})
    first.complete(good[0], {"value": 1}, files=[output])
    first.fail(good[1], "t1 x.nii.gz: truncated")
    again = lambda **kw: BatchInference(entries, tmp_path / "sessions", **{"model_files": [model], "settings": {"spacing": 4.0}, **kw})  # noqa: E731
    assert [e["session"] for e in again().pending()] == [good[1]]  # failed sessions are redone
    assert len(again(overwrite=True).pending()) == 2
    assert len(again(settings={"spacing": 2.0}).pending()) == 2
    model.write_bytes(b"retrained")
    assert len(again().pending()) == 2  # another model: nothing is complete
    model.write_bytes(b"weights")
    assert len(again().pending()) == 1
    scan.write_bytes(scan.read_bytes() + b"\0")  # the user replaced the scan
    assert len(again().pending()) == 2
    output.unlink()
    assert len(again().pending()) == 2  # an output file is missing
    table = again().table()
    assert table["session"].tolist() == good[:2] and table["error"].tolist()[1] == "t1 x.nii.gz: truncated"
    assert str(table["value"].dtype) == "Int64"
