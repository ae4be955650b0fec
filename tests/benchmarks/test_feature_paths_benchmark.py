"""benchmarks/feature_paths.py on the tiny cohort and one small design cohort: rows, intervals, docs table.

Metric values are not asserted (a dozen tiny sessions); what is: each variant's linear path is fitted as the
bundles fit it and reads its own features (the histogram and tissue variants predict differently), every row
has n and a subject-bootstrap interval, and the docs table lands between its markers.
"""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark

pytestmark = pytest.mark.slow


def _script():
    return load_benchmark('feature_paths')


def test_feature_paths_design_check_runs_end_to_end(tiny_manifest, tmp_path, monkeypatch):
    module = _script()
    monkeypatch.setattr(module, "CACHE", tmp_path / "cache")
    docs = tmp_path / "generalisation.md"
    docs.write_text("intro\n<!-- feature_paths:table -->\nnot run\n<!-- /feature_paths:table -->\nafter\n")
    variants = ("histogram", "tissue+shape")
    argv = ["--demo", str(tiny_manifest), "--shifts", "bias", "--subjects", "3", "--variants", ",".join(variants),
            "--out", str(tmp_path / "fp.json"), "--docs", str(docs)]
    assert module.main(argv) == 0
    report = json.loads((tmp_path / "fp.json").read_text())
    keys = [(r["task"], r["variant"], r["scored_on"]) for r in report["rows"]]
    sets = ["demo validation", "seed 3, bias"]
    assert keys == [(task, variant, name) for task in ("brain_age", "sex") for variant in variants for name in sets]
    for row in report["rows"]:
        block = row["model"]
        metric = "mae" if row["task"] == "brain_age" else "auc"
        assert row["n_sessions"] >= row["n_subjects"] >= 2
        if block[metric] == block[metric]:  # AUC is undefined (NaN) when a set has one sex only
            assert len(block["ci95"]) == 2 and block["ci95"][0] <= block["ci95"][1]
    age = {(r["variant"], r["scored_on"]): r["model"]["mae"] for r in report["rows"] if r["task"] == "brain_age"}
    assert len({age[(variant, "seed 3, bias")] for variant in variants}) == 2
    text = docs.read_text()
    assert "not run" not in text and "| seed 3, bias |" in text and text.endswith("after\n")
