"""Evaluation a reviewer would accept: subject bootstrap, misses that count, provenance, stale metrics, the guard."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from monai_ms.bundle.export import ExportError, check_metrics_checkpoint
from monai_ms.bundle.provenance import evaluation_provenance
from monai_ms.engines.handlers.baseline_guard import BaselineGuard
from monai_ms.engines.handlers.classification import ClassificationReportHandler
from monai_ms.engines.handlers.common import PredictionTableHandler, RegressionReportHandler
from monai_ms.engines.metrics.bootstrap import bootstrap_metrics, resample_indices
from monai_ms.engines.metrics.scores import regression_metrics
from monai_ms.engines.metrics.segmentation import segmentation_metrics, summarize_segmentation


def _two_sessions_per_subject(n_subjects: int = 12, seed: int = 0):
    """Sessions of one subject share their error (same brain, same bias): the typical longitudinal cohort."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat([f"P{i:02d}" for i in range(n_subjects)], 2)
    true = rng.uniform(0, 8, size=subjects.size)
    subject_error = np.repeat(rng.normal(0, 1.5, size=n_subjects), 2)
    pred = true + subject_error + rng.normal(0, 0.05, size=subjects.size)
    return subjects, pred, true


def test_every_resample_keeps_each_subjects_sessions_together():
    subjects, _, _ = _two_sessions_per_subject()
    members = {s: set(np.flatnonzero(subjects == s)) for s in set(subjects)}
    for index in resample_indices(subjects, n_resamples=200, seed=3):
        assert index.size % 2 == 0 and index.size == subjects.size  # 12 draws of 2-session subjects
        drawn = pd.Series(index).value_counts()
        for subject, sessions in members.items():
            # both sessions of a subject are drawn equally often (0, 1, 2, ... times), never one without the other
            counts = {int(drawn.get(i, 0)) for i in sessions}
            assert len(counts) == 1, (subject, counts)
    # a session bootstrap splits subjects: some resample draws one session of a subject and not the other
    split_once = any(
        len({int(pd.Series(index).value_counts().get(i, 0)) for i in sessions}) > 1
        for index in resample_indices(None, n_resamples=50, seed=3, n_items=subjects.size)
        for sessions in members.values()
    )
    assert split_once


def test_subject_bootstrap_interval_is_wider_than_a_session_bootstrap_on_correlated_sessions():
    subjects, pred, true = _two_sessions_per_subject()

    def compute(index):
        return {"model": regression_metrics(pred[index], true[index])}

    by_subject = bootstrap_metrics(compute, subjects, n_resamples=2000, seed=0)
    by_session = bootstrap_metrics(compute, None, n_resamples=2000, seed=0, n_items=subjects.size)
    low_s, high_s = by_subject["intervals"]["model"]["mae"]
    low_e, high_e = by_session["intervals"]["model"]["mae"]
    point = regression_metrics(pred, true)["mae"]
    assert low_s < point < high_s and low_e < point < high_e
    # 12 independent subjects, not 24 independent sessions: the honest interval is wider (about sqrt(2))
    assert (high_s - low_s) > 1.2 * (high_e - low_e)
    assert by_subject["n_subjects"] == 12 and by_subject["n_sessions"] == 24 and by_subject["unit"] == "subject"
    # seeded: the same seed gives the same interval, another seed another one
    first, again, other = (bootstrap_metrics(compute, subjects, n_resamples=300, seed=s)["intervals"] for s in (5, 5, 6))
    assert first == again and other != first


def test_hd95_counts_a_missed_scan_instead_of_dropping_it():
    truth = np.zeros((20, 20, 20), bool)
    truth[4:9, 4:9, 4:9] = True
    perfect = segmentation_metrics(truth, truth, spacing=2.0)
    missed = segmentation_metrics(np.zeros_like(truth), truth, spacing=2.0)
    assert perfect["hd95_mm"] == 0.0 and perfect["hd95_status"] == "defined"
    assert math.isnan(missed["hd95_mm"]) and missed["hd95_status"] == "missed"
    diagonal = math.sqrt(3) * 40.0  # 20 voxels of 2 mm per axis
    assert missed["fov_diagonal_mm"] == pytest.approx(diagonal) and missed["hd95_mm_penalised"] == pytest.approx(diagonal)
    summary = summarize_segmentation([perfect, missed])
    assert summary["mean_hd95_mm"] == 0.0  # over the defined scan only, as named ...
    assert summary["n_scans_hd95_defined"] == 1 and summary["n_scans_hd95_missed"] == 1  # ... and the miss is counted
    assert summary["mean_hd95_mm_penalised"] == pytest.approx(diagonal / 2)
    assert summary["mean_dice"] == pytest.approx(0.5) and summary["lesion_tpr"] == pytest.approx(0.5)
    # a lesion-free scan where the model finds nothing enters neither mean
    empty = segmentation_metrics(np.zeros_like(truth), np.zeros_like(truth), spacing=2.0)
    three = summarize_segmentation([perfect, missed, empty])
    assert three["n_scans_hd95_both_empty"] == 1 and three["mean_hd95_mm_penalised"] == pytest.approx(diagonal / 2)


def test_lesion_fdr_is_the_share_of_predicted_lesions_that_are_false():
    truth = np.zeros((24, 24, 24), bool)
    truth[2:5, 2:5, 2:5] = True
    pred = truth.copy()
    pred[10:13, 10:13, 10:13] = True
    pred[18:21, 18:21, 18:21] = True  # two false lesions among three predicted
    result = segmentation_metrics(pred, truth, spacing=1.0)
    assert result["lesion_fdr"] == pytest.approx(2 / 3) and "lesion_fpr" not in result


def _entries(n_subjects: int, sessions: int = 1, offset: int = 0):
    rng = np.random.default_rng(offset)
    out = []
    for i in range(n_subjects):
        for k in range(sessions):
            out.append({"subject": f"S{i + offset}", "session": f"S{i + offset}-{k}", "age": float(rng.uniform(20, 60)),
                        "sex": "F" if i % 2 else "M", "edss": float(rng.choice(np.arange(0, 8.5, 0.5)))})
    return out


def _regression_report(tmp_path, preds, entries, train, **kwargs):
    handler = RegressionReportHandler(tmp_path, entries, train, target_key="edss", within=1.0, n_resamples=200, **kwargs)
    handler.ids = [e["session"] for e in entries]
    handler.labels = [e["edss"] for e in entries]
    handler.preds = list(map(float, preds))
    return handler.write()


def test_edss_predictions_are_clipped_rounded_and_the_raw_value_kept(tmp_path):
    train, test = _entries(20), _entries(5, sessions=2, offset=100)
    raw = [-1.3, 0.2, 2.26, 2.74, 11.0, 4.0, 3.1, 9.9, 12.5, 5.0]
    report = _regression_report(tmp_path, raw, test, train, value_range=[0.0, 10.0], round_to=0.5)
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert table["prediction"].tolist() == [0.0, 0.2, 2.26, 2.74, 10.0, 4.0, 3.1, 9.9, 10.0, 5.0]
    assert table["prediction_rounded"].tolist() == [0.0, 0.0, 2.5, 2.5, 10.0, 4.0, 3.0, 10.0, 10.0, 5.0]
    assert table["prediction_raw"].tolist() == raw
    clipped = np.clip(raw, 0, 10)
    assert report["model"]["mae"] == pytest.approx(np.mean(np.abs(clipped - table["edss"])))
    assert report["prediction_range"]["n_clipped"] == 3
    # n and an interval for the model and every baseline; 5 subjects of 2 sessions
    assert report["uncertainty"]["n_subjects"] == 5 and report["uncertainty"]["n_sessions"] == 10
    for block in [report["model"], *report["baselines"].values()]:
        low, high = block["ci95"]["mae"]
        assert low <= block["mae"] <= high and low < high
    sidecar = json.loads((tmp_path / "predictions.provenance.json").read_text())
    assert sidecar["rows"] == 10 and "prediction_raw" in sidecar["columns"]


def test_inference_table_clips_edss_and_keeps_the_raw_value(tmp_path):
    table = PredictionTableHandler(tmp_path / "p.csv", value_name="edss_pred", value_range=[0.0, 10.0], round_to=0.5)
    table.ids, table.preds = ["a", "b", "c"], [-0.4, 3.3, 10.2]
    frame = table.write()
    assert frame.columns.tolist() == ["session", "edss_pred", "edss_pred_rounded", "edss_pred_raw", "model_version"]
    assert frame["edss_pred"].tolist() == [0.0, 3.3, 10.0] and frame["edss_pred_rounded"].tolist() == [0.0, 3.5, 10.0]
    assert frame["edss_pred_raw"].tolist() == [-0.4, 3.3, 10.2]
    assert not (tmp_path / "p.provenance.json").exists()  # no provenance given, no sidecar


def test_inference_table_writes_its_provenance_beside_it(tmp_path):
    manifest, checkpoint = tmp_path / "new_scans.json", tmp_path / "model.pt"
    manifest.write_text('{"testing": []}')
    torch.save({"w": torch.ones(2)}, checkpoint)
    record = evaluation_provenance("testing", manifest, checkpoint)
    table = PredictionTableHandler(tmp_path / "inference" / "predictions.csv", value_name="edss_pred", value_range=[0.0, 10.0],
                                   round_to=0.5, provenance=record)
    table.ids, table.preds = ["a", "b"], [1.2, 12.0]
    frame = table.write()
    sidecar = json.loads((tmp_path / "inference" / "predictions.provenance.json").read_text())
    assert sidecar["table"] == "predictions.csv" and sidecar["rows"] == 2 and sidecar["columns"] == frame.columns.tolist()
    assert sidecar["provenance"]["split"] == "testing"
    assert sidecar["provenance"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sidecar["provenance"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_exported_provenance_keeps_the_hashes_and_drops_the_trainers_folders(tmp_path):
    from monai_ms.bundle.export import eval_provenance_from, trained_model_section

    manifest, checkpoint = tmp_path / "cohort" / "manifest.json", tmp_path / "models" / "model.pt"
    manifest.parent.mkdir()
    checkpoint.parent.mkdir()
    manifest.write_text("{}")
    torch.save({"w": torch.ones(2)}, checkpoint)
    report = {"split": "testing", "model": {"n": 3, "mae": 0.5}, "baselines": {},
              "provenance": {**evaluation_provenance("testing", manifest, checkpoint), "overrides": {"epochs": 2}}}
    recorded = eval_provenance_from(report)
    assert recorded["manifest"] == "manifest.json" and recorded["checkpoint"] == "model.pt"
    assert recorded["manifest_sha256"] == hashlib.sha256(b"{}").hexdigest() and recorded["overrides"] == {"epochs": 2}
    assert str(tmp_path) not in json.dumps(recorded)
    assert report["provenance"]["manifest"] == str(manifest.resolve())  # the report itself is not changed
    assert eval_provenance_from({"model": {"mae": 1.0}}) == {}
    section = trained_model_section("edss", "edss.zip", "0.3.1", {}, {}, None, None, report, {"model.pt": "00"}, 10, "Net", False)
    assert recorded["checkpoint_sha256"] in section and recorded["manifest_sha256"] in section
    assert "split `testing`" in section and "`epochs` = `2`" in section


def test_a_constant_model_is_marked_as_not_beating_its_baselines(tmp_path):
    train, test = _entries(20), _entries(8, offset=50)
    median = float(np.median([e["edss"] for e in train]))
    report = _regression_report(tmp_path / "constant", [median] * len(test), test, train)
    assert report["beats_baselines"] is False
    comparison = report["baseline_comparison"]
    assert comparison["metric"] == "mae" and comparison["lower_is_better"] is True
    assert comparison["baseline"] in report["baselines"]
    assert comparison["baselines"]["training_median"] == pytest.approx(report["model"]["mae"])
    good = _regression_report(tmp_path / "good", [e["edss"] + 0.1 for e in test], test, train)
    assert good["beats_baselines"] is True and good["baseline_comparison"]["difference_ci95"][1] < 0


def test_classification_report_has_ece_and_a_reliability_diagram(tmp_path):
    train, test = _entries(10), _entries(6, sessions=2, offset=30)
    handler = ClassificationReportHandler(tmp_path, test, train, volume_key=None, n_resamples=100)
    handler.ids = [e["session"] for e in test]
    handler.labels = [1.0 if e["sex"] == "M" else 0.0 for e in test]
    handler.preds = [0.85, 0.75, 0.3, 0.2, 0.95, 0.6, 0.45, 0.1, 0.7, 0.65, 0.35, 0.05]
    report = handler.write()
    p, y = np.asarray(handler.preds), np.asarray(handler.labels)
    bins = np.minimum((p * 10).astype(int), 9)
    expected = sum(np.mean(bins == b) * abs(p[bins == b].mean() - y[bins == b].mean()) for b in np.unique(bins))
    assert report["model"]["ece"] == pytest.approx(expected)
    assert sum(report["calibration"]["count"]) == 12
    assert (tmp_path / "reliability_diagram.png").stat().st_size > 1000
    assert report["baseline_comparison"]["baseline"] == "training_prevalence" and report["uncertainty"]["n_subjects"] == 6


def test_provenance_records_split_and_hashes_and_export_refuses_a_changed_checkpoint(tmp_path):
    manifest, checkpoint = tmp_path / "manifest.json", tmp_path / "model.pt"
    manifest.write_text("{}")
    torch.save({"w": torch.ones(2)}, checkpoint)
    record = evaluation_provenance("validation", manifest, checkpoint)
    assert record["split"] == "validation"
    assert record["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["manifest_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert record["overrides"] is None and "unknown" in record["overrides_note"]  # not run through monai.bundle run
    report = {"split": "validation", "provenance": record}
    assert check_metrics_checkpoint(report, checkpoint, "eval/metrics.json") == "validation"
    torch.save({"w": torch.zeros(2)}, checkpoint)  # trained again after the evaluation
    with pytest.raises(ExportError, match=r"metrics of the validation split were computed with checkpoint .*stale metrics"):
        check_metrics_checkpoint(report, checkpoint, "eval/metrics.json")
    with pytest.raises(ExportError, match="records no checkpoint SHA-256"):
        check_metrics_checkpoint({"model": {"mae": 1.0}}, checkpoint, "eval/metrics.json")


class _Constant(torch.nn.Module):
    """Predicts one value for everyone (a parameter, so an optimizer has something to hold)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor([value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], 1) + 0.0 * x[:, :1]


def _train_and_validate(network, train, val, caplog):
    from ignite.metrics import MeanAbsoluteError
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler, from_engine

    from monai_ms.engines.handlers.common import lower_is_better

    def loader(entries):
        data = [{"image": torch.tensor([float(e["edss"])]), "label": torch.tensor([float(e["edss"])])} for e in entries]
        return torch.utils.data.DataLoader(data, batch_size=4)

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader(val), network=network,
        key_val_metric={"val_mae": MeanAbsoluteError(output_transform=from_engine(["pred", "label"]))},
        metric_cmp_fn=lower_is_better, decollate=False,
    )
    guard = BaselineGuard(evaluator, "edss", train, val)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=loader(train), network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0), loss_function=torch.nn.L1Loss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True), guard], decollate=False,
    )
    with caplog.at_level(logging.INFO, logger="monai_ms.engines.handlers.baseline_guard"):
        trainer.run()
    return guard, [r for r in caplog.records if r.name == "monai_ms.engines.handlers.baseline_guard"]


def test_guard_warns_in_one_line_when_a_constant_model_ends_training(caplog):
    train, val = _entries(20), _entries(6, offset=70)
    median = float(np.median([e["edss"] for e in train]))
    guard, records = _train_and_validate(_Constant(median), train, val, caplog)
    assert guard.result["beats_baseline"] is False and guard.result["name"] == "training_median"
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "NO BETTER THAN ITS TRIVIAL BASELINE" in records[0].getMessage() and "training_median" in records[0].getMessage()


def test_guard_stays_quiet_for_a_model_that_learnt_the_target(caplog):
    train, val = _entries(20), _entries(6, offset=70)
    identity = torch.nn.Linear(1, 1)
    with torch.no_grad():
        identity.weight.fill_(1.0)
        identity.bias.fill_(0.0)
    guard, records = _train_and_validate(identity, train, val, caplog)
    assert guard.result["beats_baseline"] is True and guard.result["best_metric"] == pytest.approx(0.0)
    assert [r.levelno for r in records] == [logging.INFO]
