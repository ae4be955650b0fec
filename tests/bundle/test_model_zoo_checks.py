"""The MONAI model-zoo's own bundle checks, on every bundle (as Project-MONAI/model-zoo ``ci/verify_bundle.py`` runs them).

- ``verify_metadata`` against the offline copy of the metadata schema (no download);
- ``verify_net_in_out`` at the declared input shape (EDSS: T1 as ``image``, T2 and demographics as
  ``extra_forward_args``, because its forward takes three inputs);
- ``ckpt_export`` to TorchScript, reload, same output as the eager network;
- ``ConfigWorkflow(...).check_properties()`` for the train workflow (``train.json``) and the infer
  workflow (``train.json`` + ``inference.json``, and + ``evaluate.json``), after ``initialize``;
- ``large_files.yml`` in the format ``monai.bundle download_large_files`` reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES

from monai_ms.bundle.verify import SCHEMA_DIR

BUNDLES = ("edss", "lesion_seg", "brain_age", "sex")
SCHEMA = SCHEMA_DIR / "meta_schema_20240725.json"
# of MONAI-extra-test-data 0.8.1 meta_schema_20240725.json
SCHEMA_SHA256 = "486ba371e85c5c001c0dc3f94fa796d16ecd7ca64bceafc4145c58a2254c2ccf"


def configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def metadata(bundle: str) -> dict:
    return json.loads((configs(bundle) / "metadata.json").read_text())


def net_inputs(bundle: str, spatial: tuple[int, ...] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random inputs at the declared shapes: the first image input, and the others as keyword arguments."""
    inputs = metadata(bundle)["network_data_format"]["inputs"]
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, entry in inputs.items():
        if entry["type"] == "tabular":
            tensors[name] = torch.rand(1, entry["num_channels"], generator=generator) * 50 + 20
        else:
            shape = spatial or tuple(int(s) if isinstance(s, int) else 16 for s in entry["spatial_shape"])
            tensors[name] = torch.rand(1, entry["num_channels"], *shape, generator=generator)
    first = next(iter(tensors))
    return tensors.pop(first), tensors


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_offline(bundle, tmp_path):
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # an existing file is used as is: nothing is downloaded
    verify_metadata(meta_file=str(configs(bundle) / "metadata.json"), filepath=str(schema), hash_val=SCHEMA_SHA256, hash_type="sha256")
    broken = {**metadata(bundle)}
    del broken["network_data_format"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema), hash_val=SCHEMA_SHA256, hash_type="sha256")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    meta = metadata(bundle)
    inputs = meta["network_data_format"]["inputs"]
    override = {}
    extra: dict[str, torch.Tensor] = {}
    if "image" not in inputs:
        # a multi-input network: MONAI feeds "image" positionally, the rest go in extra_forward_args
        first, *rest = inputs
        override["_meta_#network_data_format#inputs#image"] = inputs[first]
        _, extra = net_inputs(bundle)
        assert list(extra) == rest
    # "8*n" patches: n = 1 (8^3) leaves one voxel at the bottleneck, where instance norm is undefined
    n = 2 if bundle == "lesion_seg" else 1
    verify_net_in_out(net_id="network_def", meta_file=str(configs(bundle) / "metadata.json"),
                      config_file=str(configs(bundle) / "train.json"), device="cpu", n=n, extra_forward_args=extra, **override)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_ckpt_export_to_torchscript_and_reload(bundle, tmp_path):
    from monai.bundle import ConfigParser, ckpt_export

    parser = ConfigParser()
    parser.read_config(str(configs(bundle) / "train.json"))
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(configs(bundle) / "metadata.json"), config_file=str(configs(bundle) / "train.json"))
    extra_files = {"metadata.json": ""}
    scripted = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra_files)
    assert json.loads(extra_files["metadata.json"])["version"] == metadata(bundle)["version"]
    image, extra = net_inputs(bundle, spatial=(32, 40, 32) if bundle != "lesion_seg" else (32, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(scripted(image, *extra.values()), network(image, **extra), rtol=1e-4, atol=1e-5)


def _workflow(bundle: str, second: str | None, workflow_type: str, manifest: Path, tmp_path: Path):
    from monai.bundle import ConfigWorkflow

    files = [str(configs(bundle) / "train.json")] + ([str(configs(bundle) / second)] if second else [])
    overrides = {**TINY_OVERRIDES, "epochs": 1, "cache_rate": 0.0, "data_manifest": str(manifest),
                 "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    if bundle == "lesion_seg":
        overrides.pop("roi_size")
    if bundle == "edss":
        # no lesion stage: its default ("auto") would train a full lesion_seg run inside initialize();
        # that path is tested end to end in test_bundle_edss.py (the usage line from nothing)
        overrides["lesion_init"] = ""
    if workflow_type == "infer" and not (tmp_path / "models" / "model.pt").is_file():
        # an untrained checkpoint in the trained one's place: these workflows load (and hash) it
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(files[0])
        (tmp_path / "models").mkdir(parents=True, exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    return ConfigWorkflow(config_file=files, meta_file=str(configs(bundle) / "metadata.json"),
                          workflow_type=workflow_type, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_workflow_required_properties(bundle, tiny_manifest, tmp_path):
    for second, workflow_type in ((None, "train"), ("inference.json", "infer"), ("evaluate.json", "infer")):
        workflow = _workflow(bundle, second, workflow_type, tiny_manifest, tmp_path)
        workflow.initialize()
        assert workflow.check_properties() == [], (bundle, second)
        if workflow_type == "train":
            assert workflow.max_epochs == 1 and workflow.trainer.state.max_epochs == 1
        else:
            # the standard ids are the bundle's own evaluator, not copies
            section = "infer" if second == "inference.json" else "evaluate"
            assert workflow.evaluator is workflow.parser.get_parsed_content(f"{section}#evaluator")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_large_files_yml_in_model_zoo_format(bundle):
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import _safe_large_file_path

    bundle_dir = REPO / "bundles" / bundle
    text = (bundle_dir / "large_files.yml").read_text()
    assert "NO TRAINED MODEL IS HOSTED YET" in text  # the placeholder says so
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "large_files.yml"))
    (entry,) = parser.get()["large_files"]
    assert set(entry) == {"path", "url", "hash_val", "hash_type"}
    assert Path(_safe_large_file_path(str(bundle_dir), entry["path"])) == bundle_dir / "models" / "model.pt"
    assert entry["hash_type"] == "sha256" and entry["url"].startswith("https://")
    assert f"/{bundle}_model.pt" in entry["url"]
