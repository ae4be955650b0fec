"""benchmarks/generalisation.py in its tiny mode: one bundle (brain_age, the fastest), one shift and one given cohort, both cases.

What the suite promises: a row per (bundle, shift, case) with the model's metric, the trivial and the
imaging-feature baselines and n; the reference row (shift ``none``); case b scored with the reference-trained
model and leaving its folder alone; a cohort given as ``--cohort NAME=MANIFEST`` scored from that manifest as it
is; a rerun that redoes nothing; the docs table filled between its markers.
Timings and metric values are not asserted (tiny cohorts, 1 epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

SHIFTS = ("contrast",)  # one shift: the suite treats every shift alike, and each costs two tiny trainings
GIVEN = "site2"  # a cohort given by its manifest (here another settings' tiny cohort, made before the run)

pytestmark = pytest.mark.slow


def _script():
    return load_benchmark('generalisation')


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("generalisation")
    docs = root / "generalisation.md"
    docs.write_text("# Generalisation\n\nintro\n\n<!-- generalisation:table -->\nnot run yet\n<!-- /generalisation:table -->\n\nafter\n")
    module = _script()
    given = module.shifted_cohort("noise", module.TINY_SUBJECTS, None, 0, True, root / "given", 1)["manifest"]
    argv = ["--tiny", "--bundles", "brain_age", "--shifts", ",".join(SHIFTS), "--cases", "a,b", "--cache-dir", str(root / "cache"),
            "--runs-dir", str(root / "runs"), "--out", str(root / "generalisation.json"), "--docs", str(docs),
            "--cohort", f"{GIVEN}={given}"]
    assert module.main(argv) == 0
    first = json.loads((root / "generalisation.json").read_text())
    models = root / "runs" / first["cohort"]["tag"] / "none" / "brain_age" / "a" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    assert module.main(argv) == 0
    second = json.loads((root / "generalisation.json").read_text())
    return root, docs, first, second, models, before


def test_a_row_per_bundle_shift_and_case_with_model_baselines_and_n(suite):
    root, _, first, _, _, _ = suite
    keys = [(r["bundle"], r["shift"], r["case"]) for r in first["rows"]]
    expected = [("brain_age", "none", "a")] + [("brain_age", shift, case) for shift in (*SHIFTS, GIVEN) for case in ("a", "b")]
    assert keys == expected
    for row in first["rows"]:
        assert "error" not in row, row.get("error")
        assert row["metric"] == "mae" and row["lower_is_better"] is True
        assert row["model"]["value"] >= 0 and len(row["model"]["ci95"]) == 2
        assert row["trivial"]["name"] == "training_median" and row["trivial"]["value"] >= 0
        assert row["imaging_features"]["value"] >= 0
        assert row["beats_baselines"] in (True, False) and row["beats_imaging_features"] in (True, False)
        assert row["n_sessions"] >= row["n_subjects"] >= 1
        assert row["target"]["met"] in (True, False) and "0.8 x median" in row["target"]["rule"]
        assert row["split"] == "testing" and row["reused"] is False
    # every shifted cohort has the reference cohort's subjects in the same splits, and its own settings
    for shift in SHIFTS:
        cohort = first["cohorts"][shift]
        assert cohort["same_split_as_reference"] is True and cohort["settings_changes"]
        assert Path(cohort["manifest"]).is_relative_to(root / "cache" / shift)
    assert first["cohorts"]["none"]["settings_changes"] == {}
    # the given cohort is read from its manifest where it is, never generated or copied
    given = first["cohorts"][GIVEN]
    assert given["external"] is True and given["settings_changes"] is None and first["external_cohorts"] == [GIVEN]
    assert Path(given["manifest"]).is_relative_to(root / "given") and not (root / "cache" / GIVEN).exists()
    assert first["command"].startswith("python benchmarks/generalisation.py --tiny") and first["machine"]["cpu_count"] >= 1


def test_case_b_scores_the_reference_model_on_the_shifted_test_split(suite):
    root, _, first, _, models, _ = suite
    for row in first["rows"]:
        report = json.loads((Path(row["run_dir"]) / "eval" / "metrics.json").read_text())
        manifest = first["cohorts"][row["shift"]]["manifest"]
        assert report["provenance"]["manifest"] == str(Path(manifest).resolve())
        if row["case"] == "b":
            assert report["provenance"]["checkpoint"] == str((models / "model.pt").resolve())
        else:
            assert report["provenance"]["checkpoint"] == str((Path(row["run_dir"]) / "models" / "model.pt").resolve())
        # the age-bias correction case b refits goes into its own folder, never the reference model's
        if row["case"] == "b":
            overrides = json.loads((Path(row["run_dir"]) / "evaluate_overrides.json").read_text())
            assert overrides["ckpt_dir"] == str(models) and Path(overrides["age_bias_file"]).parent == Path(row["run_dir"])


def test_a_rerun_skips_finished_runs_and_leaves_the_models_alone(suite):
    _, _, first, second, models, before = suite
    assert [r["reused"] for r in second["rows"]] == [True] * len(first["rows"])
    assert second["reused_runs"] == len(second["rows"])
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before
    for a, b in zip(first["rows"], second["rows"]):
        assert a["digest"] == b["digest"] and a["model"] == b["model"]
    assert all(c["reused"] for c in second["cohorts"].values())


def test_the_docs_table_is_filled_between_the_markers(suite):
    _, docs, _, second, _, _ = suite
    text = docs.read_text()
    assert text.startswith("# Generalisation\n\nintro\n") and text.rstrip().endswith("after")
    inside = text.split("<!-- generalisation:table -->")[1].split("<!-- /generalisation:table -->")[0]
    assert "not run yet" not in inside and text.count("<!-- generalisation:table -->") == 1
    assert "Command: `python benchmarks/generalisation.py --tiny" in inside and "Machine:" in inside
    table = [line for line in inside.splitlines() if line.startswith("| brain_age")]
    assert len(table) == len(second["rows"]) == 1 + 2 * (len(SHIFTS) + 1)
    assert any("| contrast | b: shared bundle |" in line for line in table)
    assert any(f"| {GIVEN} | a: own cohort |" in line for line in table)


def test_unknown_names_are_refused():
    module = _script()
    with pytest.raises(SystemExit, match="unknown shifts: blur"):
        module.main(["--tiny", "--shifts", "blur"])
    with pytest.raises(SystemExit, match="unknown bundles: age"):
        module.main(["--tiny", "--bundles", "age"])
    with pytest.raises(SystemExit, match="expected NAME=MANIFEST"):
        module.main(["--tiny", "--cohort", "site2.json"])
    with pytest.raises(SystemExit, match="the name 'contrast' is already a cohort"):
        module.main(["--tiny", "--cohort", "contrast=site2.json"])
    with pytest.raises(SystemExit, match="site2: manifest .*missing.json does not exist"):
        module.main(["--tiny", "--cohort", "site2=missing.json"])


def test_a_cross_validated_row_reads_the_pooled_model_and_baselines(tmp_path):
    """Case c: the row of a ``monai-ms cv`` summary, with the model and baselines pooled over the held-out folds."""
    import numpy as np
    import pandas as pd

    from monai_ms.bundle.cross_validation import pooled_report, pooled_summary

    rng = np.random.default_rng(1)
    age = rng.uniform(20, 60, 50)
    frame = pd.DataFrame({"session": [f"s{i}" for i in range(50)], "age": age, "age_pred": age + rng.normal(0, 4, 50),
                          "baseline_training_median": 40.0, "baseline_imaging_features": age + rng.normal(0, 8, 50)})
    summary = {"k": 5, **pooled_summary(pooled_report("brain_age", frame, {f"s{i}": f"P{i}" for i in range(50)}, n_resamples=200))}
    (tmp_path / "cv.json").write_text(json.dumps(summary))
    row = _script().summarise({"bundle": "brain_age", "shift": "bias", "case": "c", "reused": False}, tmp_path)
    assert row["case_name"] == "own cohort, cross-validated" and row["split"].startswith("cross-validation: 5 folds")
    assert row["model"]["value"] == pytest.approx(summary["pooled"]["mae"]) and len(row["model"]["ci95"]) == 2
    assert row["trivial"]["name"] == "training_median"
    assert row["trivial"]["value"] == pytest.approx(np.abs(age - 40.0).mean())
    assert row["imaging_features"]["value"] == pytest.approx(summary["pooled_baselines"]["imaging_features"]["mae"])
    assert row["beats_baselines"] is True and row["beats_imaging_features"] is True
    assert row["n_sessions"] == 50 and row["n_subjects"] == 50 and row["validation_curve"] is None
    assert row["target"]["met"] is True  # MAE about 3.2 against 0.8 x about 10 for the median
