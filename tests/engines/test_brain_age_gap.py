"""Brain-age gap and its linear age-bias correction, against values computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from scipy import stats

from monai_ms.engines import BrainAgeReportHandler, BrainAgeTableHandler, PredictionCollector
from monai_ms.engines.metrics.brain_age import (
    AgeBias,
    brain_age_gap,
    file_sha256,
    fit_age_bias,
    gap_summary,
    load_age_bias,
)


def test_fit_recovers_a_known_bias_line():
    age = np.array([20.0, 30.0, 40.0, 50.0, 60.0])
    predicted = 25.0 + 0.6 * age  # regression to the mean: young over-, old under-estimated
    bias = fit_age_bias(predicted, age)
    assert (bias.intercept, bias.slope, bias.n) == (pytest.approx(25.0), pytest.approx(0.6), 5)
    np.testing.assert_allclose(bias.correct(predicted), age)  # a noiseless bias is removed exactly


def test_gap_by_hand():
    bias = AgeBias(intercept=20.0, slope=0.5, n=3)
    gaps = brain_age_gap([35.0, 50.0, 30.0], [30.0, 50.0, 25.0], bias)
    assert gaps["gap"].tolist() == [5.0, 0.0, 5.0]  # predicted - chronological
    assert gaps["predicted_corrected"].tolist() == [30.0, 60.0, 20.0]  # (p - 20) / 0.5
    assert gaps["gap_corrected"].tolist() == [0.0, 10.0, -5.0]
    assert set(brain_age_gap([35.0], [30.0])) == {"gap"}


def test_correction_removes_the_gap_age_correlation_on_the_calibration_split():
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 65, 40)
    predicted = 22.0 + 0.5 * age + rng.normal(0, 3, 40)
    raw = gap_summary(predicted - age, age)
    assert raw["pearson_r_with_age"] < -0.8  # the raw gap is mostly (mean - age)
    gaps = brain_age_gap(predicted, age, fit_age_bias(predicted, age))
    assert abs(stats.pearsonr(gaps["gap_corrected"], age).statistic) < 1e-9
    assert abs(gaps["gap_corrected"].mean()) < 1e-9


def test_gap_summary_by_hand():
    summary = gap_summary([1.0, -1.0, 3.0], [30.0, 40.0, 50.0])
    assert summary["mean"] == 1.0 and summary["mean_abs"] == pytest.approx(5 / 3)
    assert summary["sd"] == pytest.approx(2.0)  # sample SD of (1, -1, 3)
    assert summary["pearson_r_with_age"] == pytest.approx(0.5)
    assert np.isnan(gap_summary([2.0, 2.0], [30.0, 40.0])["pearson_r_with_age"])


@pytest.mark.parametrize(
    "predicted, age, message",
    [
        ([40.0, 40.5, 39.8], [20.0, 40.0, 60.0], r"slope .* is -?0\.0\d* \(must be > 0.1\)"),
        ([30.0, 40.0], [30.0, 40.0], "at least 3 validation sessions, got 2"),
        ([30.0, 40.0, 50.0], [40.0, 40.0, 40.0], "different ages"),
        ([30.0, np.nan, 50.0], [30.0, 40.0, 50.0], "non-finite"),
    ],
)
def test_fit_refuses_what_cannot_be_inverted(predicted, age, message):
    with pytest.raises(ValueError, match=message):
        fit_age_bias(predicted, age)


def test_load_age_bias_checks_the_file_and_the_checkpoint(tmp_path, caplog):
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, checkpoint)
    path = tmp_path / "age_bias.json"
    assert load_age_bias(path, checkpoint) is None and "no age-bias correction" in caplog.text
    path.write_text(json.dumps(AgeBias(20.0, 0.5, 12, checkpoint_sha256=file_sha256(checkpoint)).to_dict()))
    assert load_age_bias(path, checkpoint) == AgeBias(20.0, 0.5, 12, "validation", file_sha256(checkpoint))
    torch.save({"w": torch.zeros(3)}, checkpoint)  # retrained: the correction belongs to the old weights
    assert load_age_bias(path, checkpoint) is None and "another checkpoint" in caplog.text
    path.write_text(json.dumps({"intercept": 20.0, "slope": -0.5}))
    with pytest.raises(ValueError, match="age_bias.json.*slope > 0"):
        load_age_bias(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="age_bias.json: not a readable"):
        load_age_bias(path)


def _run(handler, sessions, predicted, age):
    """A real ignite run whose outputs are the given predictions (two sessions per batch)."""
    batches = [
        {
            "session": sessions[i : i + 2],
            "pred": torch.tensor(predicted[i : i + 2])[:, None],
            "label": torch.tensor(age[i : i + 2])[:, None],
        }
        for i in range(0, len(sessions), 2)
    ]
    engine = Engine(lambda engine, batch: {"pred": batch["pred"], "label": batch["label"]})
    handler.attach(engine)
    engine.run(batches)


def test_report_fits_on_validation_and_writes_gap_columns_and_bias_file(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, checkpoint)
    val_age = [20.0, 30.0, 40.0, 50.0]
    calibration = PredictionCollector()
    _run(calibration, ["v1", "v2", "v3", "v4"], [30.0 + 0.5 * a for a in val_age], val_age)  # a = 30, b = 0.5

    test_age = [24.0, 36.0, 60.0, 44.0]
    test_pred = [45.0, 46.0, 55.0, 50.0]
    entries = [{"subject": f"P{i}", "session": f"t{i}", "sex": "F", "age": a} for i, a in enumerate(test_age)]
    train = [{"session": f"r{i}", "age": a} for i, a in enumerate([30.0, 40.0, 41.0, 70.0])]  # median 40.5
    handler = BrainAgeReportHandler(tmp_path / "eval", entries, train, calibration=calibration,
                                    bias_file=tmp_path / "age_bias.json", checkpoint=checkpoint)
    _run(handler, [e["session"] for e in entries], test_pred, test_age)

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["model"]["mae"] == pytest.approx(np.mean([21, 10, 5, 6]))
    assert report["baselines"]["training_median"]["mae"] == pytest.approx(np.mean([16.5, 4.5, 19.5, 3.5]))
    correction = report["brain_age_gap"]["bias_correction"]
    assert correction["applied"] and correction["intercept"] == pytest.approx(30.0) and correction["slope"] == pytest.approx(0.5)
    assert report["brain_age_gap"]["uncorrected"]["mean"] == pytest.approx(np.mean([21, 10, -5, 6]))
    table = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    np.testing.assert_allclose(table["brain_age_gap"], np.subtract(test_pred, test_age), atol=1e-5)
    np.testing.assert_allclose(table["age_pred_corrected"], [30.0, 32.0, 50.0, 40.0], atol=1e-5)  # (p - 30) / 0.5
    np.testing.assert_allclose(table["brain_age_gap_corrected"], [6.0, -4.0, -10.0, -4.0], atol=1e-5)
    assert json.loads((tmp_path / "age_bias.json").read_text())["checkpoint_sha256"] == file_sha256(checkpoint)
    assert (tmp_path / "eval" / "scatter.png").stat().st_size > 5000

    # inference on new scans with the saved correction: same numbers; no gap where age is unknown
    new = [{"session": "t0", "age": 24.0}, {"session": "n1"}]
    table_handler = BrainAgeTableHandler(
        tmp_path / "infer.csv", new, bias_file=tmp_path / "age_bias.json", checkpoint=checkpoint, model_version="0.1.0"
    )
    _run(table_handler, ["t0", "n1"], [45.0, 52.0], [0.0, 0.0])
    inferred = pd.read_csv(tmp_path / "infer.csv")
    assert list(inferred.columns) == [
        "session", "age_pred", "age_pred_corrected", "age", "brain_age_gap", "brain_age_gap_corrected", "model_version"
    ]
    np.testing.assert_allclose(inferred["age_pred_corrected"], [30.0, 44.0])
    assert inferred["brain_age_gap_corrected"].iloc[0] == pytest.approx(6.0) and np.isnan(inferred["brain_age_gap"].iloc[1])


def test_report_without_a_usable_fit_leaves_the_corrected_gap_empty(tmp_path, caplog):
    calibration = PredictionCollector()
    _run(calibration, ["v1", "v2", "v3", "v4"], [40.0, 40.2, 39.9, 40.1], [20.0, 30.0, 40.0, 50.0])  # flat: slope ~ 0
    entries = [{"session": "t0", "age": 30.0}, {"session": "t1", "age": 50.0}]
    handler = BrainAgeReportHandler(
        tmp_path / "eval", entries, [{"age": 40.0}], calibration=calibration, bias_file=tmp_path / "age_bias.json"
    )
    _run(handler, ["t0", "t1"], [41.0, 42.0], [30.0, 50.0])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert not report["brain_age_gap"]["bias_correction"]["applied"]
    assert "must be > 0.1" in report["brain_age_gap"]["bias_correction"]["note"] and "uncorrected" in caplog.text
    assert pd.read_csv(tmp_path / "eval" / "predictions.csv")["brain_age_gap_corrected"].isna().all()
    assert not (tmp_path / "age_bias.json").exists()


def test_report_refuses_to_run_before_the_calibration_run(tmp_path):
    handler = BrainAgeReportHandler(tmp_path / "eval", [{"session": "t0", "age": 30.0}], [{"age": 40.0}], calibration=PredictionCollector())
    with pytest.raises(RuntimeError, match="calibration collected no predictions"):
        _run(handler, ["t0"], [41.0], [30.0])
