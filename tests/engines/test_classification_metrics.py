"""Classification metrics, class balance and the sex report, against values computed by hand."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine

from monai_ms.engines import ClassificationReportHandler, classification_metrics, pos_weight_from_entries
from monai_ms.engines.metrics.classification import (
    binary_labels,
    class_counts,
    class_from_probability,
    classification_baselines,
    decisions_from_logits,
    foreground_volume_ml,
    probability_from_logit,
    sex_from_probability,
)


def test_metrics_match_hand_computed_values():
    # pairs (positive, negative) ranked correctly: 0.8 beats both, 0.35 beats 0.1 only -> AUC 3/4
    result = classification_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert result["n"] == 4
    assert result["auc"] == pytest.approx(0.75)
    assert result["accuracy"] == pytest.approx(0.75)  # decisions 0, 0, 0, 1
    assert result["balanced_accuracy"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert result["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert result["confusion_matrix"] == [[2, 0], [1, 1]]  # rows true F/M, columns predicted


def test_metrics_on_an_imbalanced_split_and_the_threshold_boundary():
    result = classification_metrics([0.2, 0.6, 0.7, 0.3, 0.9], [0, 0, 0, 1, 1])
    assert result["auc"] == pytest.approx(4 / 6)  # 0.3 beats 0.2 only; 0.9 beats all three
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert result["brier"] == pytest.approx((0.04 + 0.36 + 0.49 + 0.49 + 0.01) / 5)
    assert result["confusion_matrix"] == [[1, 2], [1, 1]]
    # a probability exactly at the threshold counts as positive
    assert classification_metrics([0.5, 0.2], [1, 0])["accuracy"] == 1.0


def test_one_class_split_leaves_auc_undefined_not_wrong():
    result = classification_metrics([0.2, 0.7], [0, 0])
    assert np.isnan(result["auc"]) and np.isnan(result["balanced_accuracy"])
    assert result["accuracy"] == 0.5 and result["brier"] == pytest.approx((0.04 + 0.49) / 2)


def test_pos_weight_balances_the_classes_of_the_training_split():
    entries = [{"session": f"s{i}", "sex": sex} for i, sex in enumerate(["F", "female", "F", "M", "f", "Male"])]
    assert class_counts(entries) == {0: 4, 1: 2}
    weight = pos_weight_from_entries(entries)
    assert weight.shape == (1,) and float(weight) == pytest.approx(2.0)
    # with that weight, the summed loss of the 2 males equals the summed loss of the 4 females
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=weight, reduction="none")
    logits, labels = torch.zeros(6, 1), torch.tensor([[0.0], [0], [0], [1], [0], [1]])
    per_sample = loss(logits, labels)[:, 0]
    assert float(per_sample[labels[:, 0] == 1].sum()) == pytest.approx(float(per_sample[labels[:, 0] == 0].sum()))


def test_pos_weight_refuses_a_training_split_with_one_class():
    with pytest.raises(ValueError, match="both classes.*4 negative.*0 positive"):
        pos_weight_from_entries([{"session": f"s{i}", "sex": "F"} for i in range(4)])


def test_bad_label_names_the_session_and_value():
    with pytest.raises(ValueError, match="session sub-07-01.*'X'"):
        binary_labels([{"session": "sub-07-01", "sex": "X"}])
    with pytest.raises(ValueError, match="session s2: no 'sex' label"):
        binary_labels([{"session": "s1", "sex": "F"}, {"session": "s2"}])
    with pytest.raises(ValueError, match="must be 0 or 1, got 2"):
        binary_labels([{"session": "s1", "relapse": 2}], label_key="relapse")


def test_post_processing_from_logit_to_class():
    probability = probability_from_logit([-2.0, 0.0, 3.0, 800.0])
    np.testing.assert_allclose(probability, 1 / (1 + np.exp([2.0, 0.0, -3.0, -800.0])))
    assert sex_from_probability(probability).tolist() == ["F", "M", "M", "M"]
    assert class_from_probability([0.69, 0.7], threshold=0.7, class_names=("no", "yes")).tolist() == ["no", "yes"]
    decisions, labels = decisions_from_logits({"pred": torch.tensor([[-0.1], [0.2]]), "label": torch.tensor([[0.0], [1.0]])})
    assert decisions.tolist() == [[0], [1]] and labels.dtype == torch.long


def _brain(path, radius_vox, spacing=2.0):
    grid = np.indices((20, 20, 20)) - 10
    data = (np.sqrt((grid**2).sum(0)) <= radius_vox).astype(np.float32) * 100.0
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return float(np.count_nonzero(data)) * spacing**3 / 1000.0


def test_foreground_volume_is_non_zero_voxels_times_voxel_volume(tmp_path):
    expected = _brain(tmp_path / "t1.nii.gz", 6, spacing=2.0)
    assert foreground_volume_ml(tmp_path / "t1.nii.gz") == pytest.approx(expected)
    assert expected == pytest.approx(np.count_nonzero(nib.load(tmp_path / "t1.nii.gz").get_fdata()) * 8 / 1000)


def _cohort(tmp_path, radii, sexes, prefix):
    entries = []
    for i, (radius, sex) in enumerate(zip(radii, sexes)):
        path = tmp_path / f"{prefix}{i}_T1.nii.gz"
        _brain(path, radius)
        entries.append({"subject": f"{prefix}{i}", "session": f"{prefix}{i}-01", "t1": str(path), "sex": sex, "age": 30.0 + i})
    return entries


def test_brain_volume_baseline_separates_big_from_small_heads(tmp_path):
    train = _cohort(tmp_path, [4, 5, 4.5, 7, 8, 7.5], ["F", "F", "F", "M", "M", "M"], "tr")
    test = _cohort(tmp_path, [4.2, 7.8, 5.2, 6.8], ["F", "M", "F", "M"], "te")
    baselines = classification_baselines(train, test)
    assert baselines["training_prevalence"]["auc"] == pytest.approx(0.5)
    assert baselines["training_prevalence"]["probabilities"] == [0.5] * 4
    volume = baselines["logistic_brain_volume"]
    assert volume["auc"] == 1.0 and volume["accuracy"] == 1.0
    assert np.argsort(volume["volumes_ml"]).tolist() == [0, 2, 3, 1]


def test_report_handler_writes_metrics_table_and_plots(tmp_path):
    train = _cohort(tmp_path, [4, 5, 4.5, 7, 8, 7.5], ["F", "F", "F", "M", "M", "M"], "tr")
    test = _cohort(tmp_path, [4.2, 7.8, 5.2, 6.8], ["F", "M", "F", "M"], "te")
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])  # the hand-computed example: AUC 0.75
    logits = np.log(probabilities / (1 - probabilities))
    labels = [0.0, 1.0, 0.0, 1.0]
    order = [0, 2, 1, 3]  # sessions te0, te2 (F) get 0.1, 0.4; te1, te3 (M) get 0.35, 0.8
    batches = [
        {"session": [test[order[i]]["session"] for i in (0, 1)], "pred": torch.tensor(logits[:2, None], dtype=torch.float32),
         "label": torch.tensor([[labels[order[0]]], [labels[order[1]]]])},
        {"session": [test[order[i]]["session"] for i in (2, 3)], "pred": torch.tensor(logits[2:, None], dtype=torch.float32),
         "label": torch.tensor([[labels[order[2]]], [labels[order[3]]]])},
    ]
    engine = Engine(lambda engine, batch: {"pred": batch["pred"], "label": batch["label"]})
    handler = ClassificationReportHandler(tmp_path / "eval", entries=test, train_entries=train)
    handler.attach(engine)
    engine.run(batches)

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["model"]["auc"] == pytest.approx(0.75)
    assert report["model"]["brier"] == pytest.approx(0.158125, abs=1e-6)
    assert report["model"]["confusion_matrix"] == [[2, 0], [1, 1]]
    assert report["training_class_counts"] == {"F": 3, "M": 3}
    assert report["baselines"]["logistic_brain_volume"]["auc"] == 1.0
    table = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert table["session"].tolist() == ["te0-01", "te2-01", "te1-01", "te3-01"]
    assert table["sex"].tolist() == ["F", "F", "M", "M"]
    np.testing.assert_allclose(table["p_male"], probabilities, atol=1e-6)
    assert table["predicted"].tolist() == ["F", "F", "F", "M"] and table["correct"].sum() == 3
    by_session = {e["session"]: foreground_volume_ml(e["t1"]) for e in test}
    np.testing.assert_allclose(table["brain_volume_ml"], [by_session[s] for s in table["session"]])
    for name in ("roc_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 5000
