"""Sharing a trained bundle: export, verify, and a collaborator's inference from the unpacked zip.

One tiny EDSS training (1 epoch, 4 mm) and one export are shared by the whole module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, override_args

from monai_ms.bundle.export import ExportError, export_bundle, next_version
from monai_ms.bundle.verify import ChecksumError, UnsafeArchiveError, safe_extract, verify_checksums
from monai_ms.cli import main
from monai_ms.data import read_manifest, write_manifest

pytestmark = pytest.mark.slow

# what the test training changes from bundles/edss/configs/train.json, and so what export must record
TRAINED_WITH = {"spacing": TINY_OVERRIDES["spacing"], "roi_size": TINY_OVERRIDES["roi_size"]}


def monai_run(
    run_id: str, config_files: list[str], overrides: dict, cwd: Path, block_monai_ms: bool = False
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run RUN_ID --config_file ...`` from ``cwd``; optionally with monai_ms unimportable."""
    config = config_files[0] if len(config_files) == 1 else "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    argv = ["run", run_id, "--config_file", config, *override_args(overrides)]
    if block_monai_ms:
        # the documented command, in a process where any "import monai_ms" fails
        code = ("import runpy, sys; sys.modules['monai_ms'] = None; sys.argv = ['monai.bundle', *sys.argv[1:]]; "
                "runpy.run_module('monai.bundle', run_name='__main__')")
        command = [sys.executable, "-c", code, *argv]
    else:
        command = [sys.executable, "-m", "monai.bundle", *argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory):
    """A copy of bundles/edss trained for 1 epoch on the tiny cohort and evaluated, in its own folder."""
    bundle = tmp_path_factory.mktemp("trained") / "edss"
    shutil.copytree(REPO / "bundles/edss/configs", bundle / "configs")
    shutil.copytree(REPO / "bundles/edss/docs", bundle / "docs")
    shutil.copy(REPO / "bundles/edss/LICENSE", bundle / "LICENSE")
    # lesion_init "": this copy has no sibling lesion_seg bundle for the default lesion stage to train
    overrides = {**TINY_OVERRIDES, "epochs": 1, "data_manifest": str(tiny_manifest), "lesion_init": ""}
    configs = bundle / "configs"
    check(monai_run("training", [str(configs / "train.json")], overrides, cwd=bundle.parent))
    check(monai_run("evaluating", [str(configs / "train.json"), str(configs / "evaluate.json")], overrides, cwd=bundle.parent))
    return bundle, overrides


@pytest.fixture(scope="module")
def exported(trained, tiny_manifest, tmp_path_factory):
    bundle, _ = trained
    out = tmp_path_factory.mktemp("shared") / "edss_bundle.zip"
    return export_bundle(bundle, out, overrides=TRAINED_WITH, data_manifest=tiny_manifest)


@pytest.fixture(scope="module")
def new_scans(tiny_manifest, tmp_path_factory) -> Path:
    """A manifest of 'new scans' (no EDSS), as a collaborator would have: the tiny cohort's test sessions."""
    manifest = read_manifest(tiny_manifest)
    entries = []
    for entry in manifest["testing"] + manifest["validation"]:
        entry = {k: v for k, v in entry.items() if k != "edss"}
        for key in ("t1", "t2", "lesion", "tissue"):
            if key in entry:
                entry[key] = str((tiny_manifest.parent / entry[key]).resolve())
        entries.append(entry)
    path = tmp_path_factory.mktemp("collaborator_data") / "new_scans.json"
    write_manifest({"testing": entries}, path)
    return path


@pytest.fixture(scope="module")
def original_predictions(trained, new_scans, tmp_path_factory) -> pd.DataFrame:
    """Inference of the trained bundle where it was trained (with the training overrides)."""
    bundle, overrides = trained
    csv = tmp_path_factory.mktemp("original_inference") / "predictions.csv"
    configs = bundle / "configs"
    check(monai_run("inferring", [str(configs / "train.json"), str(configs / "inference.json")],
                    {**overrides, "data_manifest": str(new_scans), "predictions_csv": str(csv)}, cwd=bundle.parent))
    return pd.read_csv(csv)


@pytest.fixture(scope="module")
def unpacked(exported, tmp_path_factory) -> Path:
    """The collaborator's side: verify the zip and unpack it, with the CLI."""
    collaborator = tmp_path_factory.mktemp("collaborator")
    assert main(["bundle", "verify", str(exported.path), "--extract-to", str(collaborator)]) == 0
    return collaborator


def test_round_trip_collaborator_predictions_equal_the_original(unpacked, exported, new_scans, original_predictions):
    # exactly the documented command, from the folder the zip was unpacked into, no training overrides
    config = ["edss/configs/train.json", "edss/configs/inference.json"]
    check(monai_run("inferring", config, {"data_manifest": str(new_scans), "num_workers": 0}, cwd=unpacked))
    theirs = pd.read_csv(unpacked / "edss/eval/inference/predictions.csv")
    assert theirs["session"].tolist() == original_predictions["session"].tolist()
    torch.testing.assert_close(torch.tensor(theirs["edss_pred"].values), torch.tensor(original_predictions["edss_pred"].values),
                               rtol=1e-5, atol=1e-5)
    assert (theirs["model_version"].astype(str) == exported.version).all()


def test_monai_only_inference_matches_without_monai_ms(unpacked, new_scans, original_predictions):
    result = check(monai_run("inferring", ["edss/configs/inference_monai.json"],
                             {"bundle_root": "edss", "data_manifest": str(new_scans)}, cwd=unpacked, block_monai_ms=True))
    assert "monai_ms" not in result.stderr  # nothing tried to import it
    theirs = pd.read_csv(unpacked / "edss/eval/inference_monai/predictions.csv")
    merged = theirs.merge(original_predictions, on="session", suffixes=("", "_original"))
    assert len(merged) == len(original_predictions)
    # the MONAI-only config writes the network's raw output; monai_ms keeps it as edss_pred_raw (edss_pred is clipped to [0, 10])
    torch.testing.assert_close(torch.tensor(merged["edss_pred"].values), torch.tensor(merged["edss_pred_raw"].values), rtol=1e-4, atol=1e-4)


def test_changed_weights_refuse_to_run(unpacked, new_scans, tmp_path):
    bundle = tmp_path / "edss"
    shutil.copytree(unpacked / "edss", bundle)
    state = torch.load(bundle / "models/model.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01
    torch.save(state, bundle / "models/model.pt")
    csv = tmp_path / "predictions.csv"
    result = monai_run("inferring", ["edss/configs/train.json", "edss/configs/inference.json"],
                       {"data_manifest": str(new_scans), "num_workers": 0, "predictions_csv": str(csv)}, cwd=tmp_path)
    assert result.returncode == 1
    assert "model.pt: SHA-256 does not match" in result.stderr and "refusing to run a changed model" in result.stderr
    assert "Traceback" not in result.stderr and not csv.exists()
    result = monai_run("inferring", ["edss/configs/inference_monai.json"], {"bundle_root": "edss", "data_manifest": str(new_scans)},
                       cwd=tmp_path, block_monai_ms=True)
    assert result.returncode != 0 and "model files that do not match models/SHA256SUMS" in result.stderr


def test_zip_holds_a_documented_self_contained_bundle(exported, trained, tiny_manifest):
    bundle, _ = trained
    with zipfile.ZipFile(exported.path) as archive:
        names = set(archive.namelist())
        read = lambda name: archive.read(f"edss/{name}")  # noqa: E731
        expected = {"LICENSE", "configs/train.json", "configs/inference.json", "configs/evaluate.json", "configs/metadata.json",
                    "configs/inference_monai.json", "docs/README.md", "models/model.pt", "models/model.ts",
                    "models/normalization.json", "models/SHA256SUMS"}
        assert {f"edss/{name}" for name in expected} <= names
        assert not any(name.endswith("last.pt") for name in names)  # no optimizer state shipped
        # every model file has its sha256 listed
        sums = dict(reversed(line.split()) for line in read("models/SHA256SUMS").decode().splitlines())
        assert set(sums) == {"model.pt", "model.ts", "normalization.json"}
        for name, digest in sums.items():
            assert hashlib.sha256(read(f"models/{name}")).hexdigest() == digest
        metadata = json.loads(read("configs/metadata.json"))
        train = json.loads(read("configs/train.json"))
        readme = read("docs/README.md").decode()
        normalization = json.loads(read("models/normalization.json"))

    source = json.loads((REPO / "bundles/edss/configs/metadata.json").read_text())
    assert metadata["version"] == exported.version == next_version(source["version"], source["changelog"])
    assert exported.version in metadata["changelog"] and source["version"] in metadata["changelog"]
    metrics = json.loads((bundle / "eval/metrics.json").read_text())["model"]
    # the scalar metrics; their intervals (``ci95``) are in the generated README table
    assert metadata["eval_metrics"] == pytest.approx({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    assert "ci95" in metrics and "[" in readme
    assert metadata["network_data_format"]["inputs"]["t1"]["spatial_shape"] == TRAINED_WITH["roi_size"]
    # the model's preprocessing travels with it: inference in the zip uses the training settings
    assert train["spacing"] == TRAINED_WITH["spacing"] and train["roi_size"] == TRAINED_WITH["roi_size"]

    state = torch.load(bundle / "models/model.pt", weights_only=True)
    assert normalization["demographics_mean"] == pytest.approx(state["demographics_mean"].tolist())
    assert normalization["target_std"] == pytest.approx(state["target_std"].tolist())
    assert normalization["demographics_columns"][0].startswith("age")

    manifest = read_manifest(tiny_manifest)
    assert "## Trained model" in readme and readme.index("## Trained model") < readme.index("## Network")
    for split in ("training", "validation", "testing"):
        patients = len({e["subject"] for e in manifest[split]})
        assert f"| {split} | {len(manifest[split])} | {patients} |" in readme
    assert "4 x 4 x 4 mm" in readme and "32 x 40 x 32 voxels" in readme
    assert f"| model | {metrics['mae']:.3f} |" in readme and "baseline: training_median" in readme
    assert "trust" in readme and "--data_manifest new_scans.json" in readme

    # where the shipped figures come from: split, manifest and checkpoint SHA-256, bundle version, overrides
    recorded = metadata["eval_provenance"]
    assert recorded["split"] == "testing" and recorded["bundle_version"] == source["version"]
    assert recorded["manifest_sha256"] == hashlib.sha256(tiny_manifest.read_bytes()).hexdigest()
    assert recorded["checkpoint_sha256"] == hashlib.sha256((bundle / "models/model.pt").read_bytes()).hexdigest()
    assert recorded["overrides"]["epochs"] == 1 and recorded["overrides"]["data_manifest"] == str(tiny_manifest)
    assert recorded["manifest"] == tiny_manifest.name and recorded["checkpoint"] == "model.pt"  # no trainer's folders
    assert recorded["checkpoint_sha256"] in readme and recorded["manifest_sha256"] in readme


def _copy_bundle(source: Path, target: Path, *parts: str) -> Path:
    target.mkdir()
    for part in parts:
        (shutil.copytree if (source / part).is_dir() else shutil.copy)(source / part, target / part)
    return target


def test_export_refuses_metrics_of_a_checkpoint_changed_after_evaluation(trained, tmp_path, capsys):
    bundle, _ = trained
    report = json.loads((bundle / "eval/metrics.json").read_text())
    # evaluate recorded what it evaluated
    assert report["split"] == "testing" and report["provenance"]["split"] == "testing"
    assert report["provenance"]["checkpoint_sha256"] == hashlib.sha256((bundle / "models/model.pt").read_bytes()).hexdigest()
    assert report["provenance"]["overrides"]["epochs"] == 1 and report["provenance"]["bundle_version"]
    assert isinstance(report["beats_baselines"], bool) and report["model"]["ci95"]["mae"][0] <= report["model"]["mae"]
    # then the model is trained again (here: one weight changed), and the old metrics must not ship with it
    stale = _copy_bundle(bundle, tmp_path / "stale", "configs", "docs", "LICENSE", "models", "eval")
    state = torch.load(stale / "models/model.pt", weights_only=True)
    state = state.get("model", state)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01
    torch.save(state, stale / "models/model.pt")
    assert main(["bundle", "export", str(stale), "--out", str(tmp_path / "stale.zip")]) == 1
    error = capsys.readouterr().err
    assert "metrics of the testing split were computed with checkpoint" in error and "stale metrics" in error
    assert "run evaluating" in error and not (tmp_path / "stale.zip").exists()


def test_export_refuses_what_it_cannot_share(trained, tmp_path, capsys):
    bundle, _ = trained
    untrained = _copy_bundle(bundle, tmp_path / "untrained", "configs", "docs", "LICENSE")
    assert main(["bundle", "export", str(untrained), "--out", str(tmp_path / "a.zip")]) == 1
    error = capsys.readouterr().err
    assert "models/model.pt: no trained model" in error and "run training" in error and not (tmp_path / "a.zip").exists()

    unevaluated = _copy_bundle(bundle, tmp_path / "unevaluated", "configs", "docs", "LICENSE", "models")
    assert main(["bundle", "export", str(unevaluated), "--out", str(tmp_path / "b.zip")]) == 1
    error = capsys.readouterr().err
    assert "eval/metrics.json: no evaluation" in error and "run evaluating" in error and "--no-metrics" in error

    with pytest.raises(ExportError, match="--set roi_sise: .* has no such config id"):
        export_bundle(bundle, tmp_path / "c.zip", overrides={"roi_sise": [32, 40, 32]})

    existing = tmp_path / "existing.zip"
    existing.write_bytes(b"someone else's file")
    assert main(["bundle", "export", str(bundle), "--out", str(existing)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"someone else's file"


def _tamper(source: Path, target: Path, how: str) -> str:
    """Copy the exported zip with one change; return a text the verify error must contain."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as changed:
        for info in original.infolist():
            data = original.read(info)
            if how == "changed weights" and info.filename == "edss/models/model.pt":
                state = torch.load(io.BytesIO(data), weights_only=True)
                first = next(k for k, v in state.items() if v.is_floating_point())
                state[first] = state[first] * 1.01
                buffer = io.BytesIO()
                torch.save(state, buffer)
                data = buffer.getvalue()
            if how == "broken metadata" and info.filename == "edss/configs/metadata.json":
                metadata = json.loads(data)
                del metadata["version"]
                metadata["eval_metrics"] = 3.0
                data = json.dumps(metadata).encode()
            changed.writestr(info, data)
        if how == "path traversal":
            changed.writestr("edss/../../escaped.txt", "pwned")
        if how == "absolute path":
            changed.writestr(zipfile.ZipInfo("/tmp/escaped.txt"), "pwned")
        if how == "symlink":
            link = zipfile.ZipInfo("edss/models/link")
            link.external_attr = (0o120777 << 16)
            changed.writestr(link, "/etc/passwd")
    return {
        "changed weights": "edss/models/model.pt: SHA-256 does not match",
        "broken metadata": "'version' is a required property",
        "path traversal": "'edss/../../escaped.txt' would be written outside the target folder",
        "absolute path": "'/tmp/escaped.txt' would be written outside the target folder",
        "symlink": "'edss/models/link' is a symbolic link",
    }[how]


@pytest.mark.parametrize("how", ["changed weights", "broken metadata", "path traversal", "absolute path", "symlink"])
def test_tampered_zip_fails_verify_with_a_clear_line(exported, tmp_path, capsys, how):
    tampered = tmp_path / "shared" / "edss_bundle.zip"
    tampered.parent.mkdir()
    expected = _tamper(exported.path, tampered, how)
    assert main(["bundle", "verify", str(tampered), "--extract-to", str(tmp_path / "unpacked")]) == 1
    error = capsys.readouterr().err
    failures = [line for line in error.splitlines() if line.startswith("FAILED:")]
    assert any(expected in line for line in failures), error
    assert "do not run this bundle" in error
    assert not (tmp_path / "unpacked").exists() and not (tmp_path / "escaped.txt").exists()
    if how == "broken metadata":
        assert any("eval_metrics: 3.0 is not of type 'object'" in line for line in failures)


def test_safe_extract_writes_nothing_from_an_unsafe_zip(tmp_path):
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as bundle_zip:
        bundle_zip.writestr("edss/configs/train.json", "{}")
        bundle_zip.writestr("../escaped.txt", "pwned")
    with pytest.raises(UnsafeArchiveError, match="escaped.txt"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists() and not (tmp_path / "escaped.txt").exists()


def test_verify_checksums_passes_a_bundle_you_trained_yourself_and_names_a_changed_file(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"weights")
    assert verify_checksums(models)  # no SHA256SUMS: nothing to check
    (models / "SHA256SUMS").write_text(f"{hashlib.sha256(b'weights').hexdigest()}  model.pt\n")
    assert verify_checksums(models)
    (models / "model.pt").write_bytes(b"other weights")
    with pytest.raises(ChecksumError, match="model.pt: SHA-256 does not match"):
        verify_checksums(models)


@pytest.mark.parametrize("task, modalities", [("lesion_seg", None), ("brain_age", None), ("sex", None), ("lesion_seg", ["t1", "flair"])])
def test_every_bundle_exports_and_verifies(task, modalities, tmp_path):
    # an untrained network stands in for training: this checks each bundle's TorchScript, metadata and layout
    from monai.bundle import ConfigParser

    bundle = _copy_bundle(REPO / "bundles" / task, tmp_path / task, "configs", "docs", "LICENSE")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/train.json"))
    parser["bundle_root"] = str(bundle)
    if modalities:
        parser["modalities"] = modalities
    (bundle / "models").mkdir()
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, bundle / "models/model.pt")
    small = {"roi_size": [32, 40, 32]} if "roi_size" in parser else {"patch_size": [32, 32, 32]}
    overrides = {**small, **({"modalities": modalities} if modalities else {})}
    result = export_bundle(bundle, tmp_path / f"{task}.zip", overrides=overrides, require_metrics=False)
    assert main(["bundle", "verify", str(result.path)]) == 0
    with zipfile.ZipFile(result.path) as archive:
        metadata = json.loads(archive.read(f"{task}/configs/metadata.json"))
        readme = archive.read(f"{task}/docs/README.md").decode()
    assert metadata["eval_metrics"] == {} and metadata["version"] == result.version
    # the images a user must give it, named in the metadata, its input's channels and the README
    chosen = modalities or parser.get_parsed_content("modalities")
    assert metadata["modalities"] == chosen and "Input images (`modalities`" in readme
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == len(chosen)
    assert "eval_provenance" not in metadata  # nothing evaluated, nothing to trace
