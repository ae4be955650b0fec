"""ONNX export (``monai-ms bundle export --onnx``): every bundle's network, checked with ONNX Runtime; verify checks it.

Networks with perturbed random weights (no training needed: the check is export fidelity, not accuracy)
at the tiny test ROI.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO

pytest.importorskip("onnx", reason="ONNX export is an optional extra: pip install -e .[onnx]")
ort = pytest.importorskip("onnxruntime", reason="ONNX export is an optional extra: pip install -e .[onnx]")

from monai_ms.bundle.onnx_export import OnnxExportError, check_onnx, export_onnx  # noqa: E402
from monai_ms.bundle.verify import verify_bundle  # noqa: E402
from monai_ms.cli import main  # noqa: E402

BUNDLES = ("edss", "lesion_seg", "brain_age", "sex")
TINY_ROI = {"roi_size": [32, 40, 32], "patch_size": [32, 32, 32]}


def make_bundle(bundle: str, root: Path, seed: int = 0) -> Path:
    """A copy of ``bundles/<bundle>`` at the tiny ROI with a random (perturbed) ``models/model.pt``."""
    from monai.bundle import ConfigParser

    folder = root / bundle
    shutil.copytree(REPO / "bundles" / bundle / "configs", folder / "configs")
    shutil.copytree(REPO / "bundles" / bundle / "docs", folder / "docs")
    shutil.copy(REPO / "bundles" / bundle / "LICENSE", folder / "LICENSE")
    train = json.loads((folder / "configs" / "train.json").read_text())
    for key, value in TINY_ROI.items():
        if key in train:
            train[key] = value
    (folder / "configs" / "train.json").write_text(json.dumps(train, indent=4))
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "train.json"))
    parser["bundle_root"] = str(folder)
    torch.manual_seed(seed)  # the initial weights must not depend on which tests ran before in this worker
    network = parser.get_parsed_content("network_def")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised heads would make every output the same constant
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    (folder / "models").mkdir()
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


@pytest.mark.parametrize("bundle", BUNDLES)
def test_onnx_runtime_reproduces_the_checkpoint(bundle, tmp_path):
    folder = make_bundle(bundle, tmp_path)
    check = export_onnx(folder)
    assert check.path == folder / "models" / "model.onnx" and check.path.is_file()
    session = ort.InferenceSession(str(check.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    declared = list(json.loads((folder / "configs/metadata.json").read_text())["network_data_format"]["inputs"])
    assert names == declared  # EDSS: t1, t2, demographics
    # two different inputs give two different outputs (the check compares something that varies)
    feeds = [{i.name: torch.rand(2, *check.inputs[i.name][1:], generator=torch.Generator().manual_seed(s)).numpy()
              for i in session.get_inputs()} for s in (1, 2)]
    first, second = (session.run(["pred"], f)[0] for f in feeds)
    assert first.shape[0] == 2 and abs(first - second).max() > 1e-6  # dynamic batch axis
    assert check.max_abs_diff <= 1e-4


def test_lesion_seg_onnx_takes_other_patch_sizes(tmp_path):
    folder = make_bundle("lesion_seg", tmp_path)
    path = export_onnx(folder).path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["pred"], {"image": torch.rand(1, 2, 48, 32, 40).numpy()})
    assert out.shape == (1, 1, 48, 32, 40)


def test_changed_weights_fail_the_onnx_check(tmp_path):
    folder = make_bundle("sex", tmp_path)
    export_onnx(folder)
    state = torch.load(folder / "models/model.pt", weights_only=True)
    # every weight moves: one early conv alone can be nearly cancelled by the normalisation after it
    for key, value in state.items():
        if value.is_floating_point() and value.dim() > 1:
            state[key] = value * 1.1 + 0.05
    torch.save(state, folder / "models/model.pt")
    with pytest.raises(OnnxExportError, match="ONNX Runtime output differs from models/model.pt"):
        check_onnx(folder)


def test_cli_export_onnx_and_verify(tmp_path, capsys):
    folder = make_bundle("lesion_seg", tmp_path)
    out = tmp_path / "lesion_seg_bundle.zip"
    assert main(["bundle", "export", str(folder), "--out", str(out), "--onnx", "--no-metrics",
                 "--set", "patch_size=[32,32,32]"]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx: ONNX Runtime output matches models/model.pt" in printed
    with zipfile.ZipFile(out) as archive:
        assert "lesion_seg/models/model.onnx" in archive.namelist()
        sums = archive.read("lesion_seg/models/SHA256SUMS").decode()
    assert "  model.onnx" in sums
    assert main(["bundle", "verify", str(out), "--extract-to", str(tmp_path / "them")]) == 0
    assert "ONNX Runtime output matches" in capsys.readouterr().out
    # a stale ONNX file (another version) is refused by verify
    unpacked = tmp_path / "them" / "lesion_seg"
    meta = json.loads((unpacked / "configs/metadata.json").read_text())
    meta["version"] = "9.9.9"
    (unpacked / "configs/metadata.json").write_text(json.dumps(meta))
    report = verify_bundle(unpacked)
    assert any("a stale ONNX export" in line for line in report.problems), report.problems
