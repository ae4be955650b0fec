"""Tests of ``monai-ms summary`` and monai_ms.networks.summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monai_ms.cli import main
from monai_ms.networks import BrainRegressor3D, DualStreamRegressor
from monai_ms.networks.summary import BundleError, bundle_input_shapes, summarize_network

NETWORK_DEF = {
    "_target_": "monai_ms.networks.DualStreamRegressor",
    "channels": [4, 8, 16, 32],
    "strides": [2, 2, 2, 2],
    "hidden": [16],
}
EDSS_INPUTS = {
    "t1": {"type": "image", "num_channels": 1, "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32"},
    "t2": {"type": "image", "num_channels": 1, "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32"},
    "demographics": {"type": "tabular", "num_channels": 2, "spatial_shape": [], "dtype": "float32"},
}


def _total_params(text: str) -> int:
    match = re.search(r"Total params: ([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def _write_bundle(root: Path, config: dict | None = None, inputs: dict | None = None) -> Path:
    configs = root / "configs"
    configs.mkdir(parents=True)
    if config is None:
        config = {"bundle_root": ".", "roi_size": [32, 32, 32], "network_def": NETWORK_DEF}
    (configs / "train.json").write_text(json.dumps(config))
    metadata = {"version": "0.1.0", "network_data_format": {"inputs": inputs or EDSS_INPUTS, "outputs": {}}}
    (configs / "metadata.json").write_text(json.dumps(metadata))
    return root


def test_summary_counts_every_parameter_of_a_three_input_network() -> None:
    network = DualStreamRegressor(channels=(4, 8, 16, 32), hidden=(16,))
    shapes = {"t1": (1, 1, 32, 32, 32), "t2": (1, 1, 24, 32, 40), "demographics": (1, 2)}
    text = summarize_network(network, shapes)
    assert _total_params(text) == sum(p.numel() for p in network.parameters())
    # both streams ran on their own input and the head saw 2 * 32 pooled features + 2 demographics
    assert "[1, 1, 32, 32, 32]" in text and "[1, 1, 24, 32, 40]" in text and "[1, 66]" in text
    assert network.training  # the summary ran in eval mode and gave the mode back


def test_summary_passes_inputs_by_position_when_names_differ() -> None:
    network = BrainRegressor3D(channels=(4, 8, 16, 32))
    text = summarize_network(network, {"image": (2, 1, 32, 32, 32)}, depth=1)
    assert _total_params(text) == sum(p.numel() for p in network.parameters())
    with pytest.raises(ValueError, match=r"forward takes \['x'\], got 2 inputs"):
        summarize_network(network, {"image": (1, 1, 32, 32, 32), "label": (1, 1, 32, 32, 32)})


def test_summary_names_the_network_and_inputs_when_the_forward_pass_fails() -> None:
    network = DualStreamRegressor(channels=(4, 8, 16, 32))
    shapes = {"t1": (1, 1, 32, 32, 32), "t2": (1, 1, 32, 32, 32), "demographics": (1, 3)}
    with pytest.raises(RuntimeError, match=r"DualStreamRegressor failed on inputs .*demographics must have shape"):
        summarize_network(network, shapes)


def test_bundle_input_shapes_use_the_configured_roi_for_image_inputs() -> None:
    metadata = {"network_data_format": {"inputs": EDSS_INPUTS}}
    assert bundle_input_shapes(metadata, roi_size=[32, 48, 32]) == {
        "t1": (1, 1, 32, 48, 32),
        "t2": (1, 1, 32, 48, 32),
        "demographics": (1, 2),
    }
    with pytest.raises(BundleError, match=r"inputs.t1: .*got \(1, '16\*n'.*define roi_size"):
        bundle_input_shapes(metadata)
    with pytest.raises(BundleError, match="meta.json: network_data_format.inputs must be a non-empty object"):
        bundle_input_shapes({"network_data_format": {}}, source="meta.json")


def test_summary_command_prints_the_configured_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = _write_bundle(tmp_path / "edss")
    assert main(["summary", str(bundle)]) == 0
    out = capsys.readouterr().out
    expected = DualStreamRegressor(channels=(4, 8, 16, 32), hidden=(16,))
    assert out.startswith("DualStreamRegressor from")
    assert _total_params(out) == sum(p.numel() for p in expected.parameters())
    assert "inputs: t1=[1, 1, 32, 32, 32], t2=[1, 1, 32, 32, 32], demographics=[1, 2]" in out


def test_summary_command_reads_the_named_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = _write_bundle(tmp_path / "age", inputs={"image": {"num_channels": 2, "spatial_shape": [32, 32, 32]}})
    config = {"network_def": {"_target_": "monai_ms.networks.BrainRegressor3D", "in_channels": 2, "channels": [4, 8]}}
    config["network_def"]["strides"] = [2, 2]
    (bundle / "configs" / "small.json").write_text(json.dumps(config))
    assert main(["summary", str(bundle), "--config", "small.json", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "BrainRegressor3D" in out and "[1, 2, 32, 32, 32]" in out


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("no_metadata", r"configs/metadata.json: file not found"),
        ("no_network_def", r"configs/train.json: no network_def defined"),
        ("bad_network_def", r"configs/train.json: cannot build network_def: .*strides must have one entry per level"),
        ("broken_json", r"configs/train.json: not valid JSON"),
    ],
)
def test_summary_command_fails_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, breakage: str, message: str
) -> None:
    config = {"roi_size": [32, 32, 32], "network_def": dict(NETWORK_DEF)}
    if breakage == "no_network_def":
        del config["network_def"]
    if breakage == "bad_network_def":
        config["network_def"]["strides"] = [2, 2]
    bundle = _write_bundle(tmp_path / "edss", config=config)
    if breakage == "no_metadata":
        (bundle / "configs" / "metadata.json").unlink()
    if breakage == "broken_json":
        (bundle / "configs" / "train.json").write_text('{"network_def": ')
    assert main(["summary", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.startswith("monai-ms summary: error:")
