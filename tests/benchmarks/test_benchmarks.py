"""The benchmark scripts run in their smallest mode and write a JSON result with the documented keys.

Timings are not asserted (they belong to the scripts' JSON, not to tests); what a user would notice is a
script that crashes or writes a result without the figures the README table is built from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

pytestmark = pytest.mark.slow


def _script(name: str):
    return load_benchmark(name)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("benchmark_cache")


def _machine_ok(result: dict) -> None:
    assert result["machine"]["cpu_count"] >= 1
    assert result["machine"]["torch"] and result["machine"]["monai"] and result["machine"]["device_name"]
    assert result["command"].startswith("python benchmarks/")


def test_data_pipeline_tiny(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data_pipeline.json"
    argv = ["--tiny", "--variants", "naive,monai,cache", "--num-workers", "0", "--cache-dir", str(cache_dir), "--out", str(out)]
    assert _script("data_pipeline").main(argv) == 0
    result = json.loads(out.read_text())
    _machine_ok(result)
    assert "data_pipeline edss" in capsys.readouterr().out
    summary = result["summary"]
    for key in ("naive_epoch_s", "monai_uncached_epoch_s", "cache_epoch1_s", "cache_later_epoch_s", "speedup_cache_later_vs_naive",
                "cache_mb", "cache_tensor_mb"):
        assert summary[key] is not None and summary[key] > 0, key
    # the naive loader yields the bundle's tensors: same keys and shapes in every batch
    variants = result["variants"]
    assert variants["naive"]["batch_shapes"]["t1"] == variants["cache"]["batch_shapes"]["t1"]
    assert variants["cache"]["cache_tensor_mb"] > 0
    check = result["equivalence_naive_vs_monai"]
    assert check["shapes_equal"] and check["max_abs_diff_aligned"]["t2"] < 1e-2
    # what a cached epoch is made of, with MONAI's z-score timed beside the bundle's
    names = list(result["tail_profile"]["ms_per_item"])
    assert result["tail_profile"]["tail_ms_per_item"] > 0 and any(name.startswith("RandAffined") for name in names)
    assert any(name.startswith("ZScoreNonzerod") for name in names) and any(name.startswith("NormalizeIntensityd") for name in names)


def test_train_step_tiny(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "train_step.json"
    assert _script("train_step").main(["--tiny", "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _machine_ok(result)
    assert set(result["bundles"]) == {"edss", "lesion_seg", "brain_age", "sex"}
    for name, entry in result["bundles"].items():
        assert entry["options"]["fp32"]["samples_per_s"] > 0, name
        assert entry["options"]["fp32"]["speedup_vs_fp32"] == 1.0
        assert "channels_last_3d" in entry["options"]
    data = result["data_side_edss"]
    assert any("data_wait_share" in value for value in data.values() if isinstance(value, dict))


def test_inference_tiny(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "inference.json"
    assert _script("inference").main(["--tiny", "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _machine_ok(result)
    lesion = result["bundles"]["lesion_seg"]
    assert lesion["median_seconds"]["network_forward_s"] > 0 and lesion["windows"] > 0
    stages = {"load_s", "preprocess_s", "sliding_window_s", "postprocess_invert_s", "write_s", "end_to_end_s"}
    assert set(lesion["median_seconds"]) >= stages
    assert result["bundles"]["edss"]["median_seconds"]["network_forward_s"] > 0
    assert result["summary"]["lesion_seg"]["overhead_ratio"] > 0


def test_time_to_accuracy_tiny(tmp_path: Path, tiny_manifest: Path) -> None:
    out = tmp_path / "time_to_accuracy.json"
    argv = ["--tiny", "--bundles", "lesion_seg", "--variants", "default,v0.3", "--evaluate",
            "--manifest", str(tiny_manifest), "--out", str(out)]
    assert _script("time_to_accuracy").main(argv) == 0
    result = json.loads(out.read_text())
    _machine_ok(result)
    assert result["targets"]["lesion_seg"] == 0.70 and result["targets"]["edss"] > 0
    runs = {r["variant"]: r for r in result["results"]}
    assert set(runs) == {"default", "v0.3"}
    for run in runs.values():
        assert run["exit_status"] == 0 and not run["stopped_at_cap"]
        assert run["epochs"] == 2 and len(run["curve"]) == 2 and run["target"]["metric"] == "val_mean_dice"
        # each run trained in its own copy of the bundles, so nothing trained in the checkout was used
        copy = tmp_path / "time_to_accuracy" / f"lesion_seg_{run['variant']}" / "bundles" / "lesion_seg"
        assert (copy / "configs" / "train.json").is_file()
    # --evaluate scores the default once on the test split, with the trivial baseline beside it; not the others
    assert runs["default"]["evaluate"]["exit_status"] == 0 and runs["default"]["evaluate"]["split"] == "testing"
    assert "mean_dice" in runs["default"]["evaluate"]["model"] and runs["default"]["evaluate"]["baselines"]
    assert "evaluate" not in runs["v0.3"]
    # the previous release's settings were put back, null included, through an override file
    overrides = json.loads((tmp_path / "time_to_accuracy" / "lesion_seg_v0.3" / "overrides.json").read_text())
    assert overrides["autocast"] is None and overrides["network_def#prior_probability"] is None


def test_modalities_tiny(tmp_path: Path) -> None:
    argv = ["--tiny", "--variants", "t1_flair", "--out", str(tmp_path / "modalities")]
    assert _script("modalities").main(argv) == 0
    result = json.loads((tmp_path / "modalities" / "result.json").read_text())
    _machine_ok(result)
    row = result["rows"]["t1_flair"]
    # scored on the validation split, never the test split, with its interval and n
    assert row["split"] == "validation" and row["modalities"] == ["t1", "flair"]
    assert row["n_scans"] == len(json.loads(Path(result["manifest"]).read_text())["validation"])
    assert len(row["mean_dice_ci95"]) == 2 and row["n_subjects"] >= 1


def test_refactor_check_compares_metrics_value_by_value(tmp_path: Path, tiny_manifest: Path) -> None:
    script = _script("refactor_check")
    before = {"summary": {"mae": 1.0, "n": 12, "ci95": {"mae": [0.5, 1.5]}}, "provenance": {"created_utc": "x"}, "split": "testing"}
    after = {"summary": {"mae": 1.0 + 1e-9, "n": 12, "ci95": {"mae": [0.5, 1.6]}}, "provenance": {"created_utc": "y"}, "split": "testing"}
    assert script.differences(before, after, 1e-6) == ["summary.ci95.mae.1: 1.5 -> 1.6"]
    assert script.differences(before, {**before, "extra": 1}, 1e-6) == ["extra: only after"]
    # the whole check, one bundle, the working tree against HEAD: the same code gives the same metrics
    argv = ["--base", "HEAD", "--bundles", "sex", "--manifest", str(tiny_manifest), "--out", str(tmp_path / "check")]
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "check" / "result.json").read_text())
    assert result["bundles"]["sex"]["same"] and result["bundles"]["sex"]["compared"] > 20
