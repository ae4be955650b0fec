"""Lesion-wise and voxel metrics on hand-made masks with known answers; lesion tables, QC, flip TTA."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from monai_ms.engines.inference.segmentation import FlipTTAInferer, save_qc_figure
from monai_ms.engines.metrics.segmentation import (
    label_lesions,
    lesion_detection,
    lesion_table,
    segmentation_metrics,
    summarize_segmentation,
)


def _cube(mask, lo, hi, value=True):
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = value


@pytest.fixture()
def case():
    """Reference: A (4^3), B (3^3), C+D (two 4^3 cubes sharing a face), E (one 1 mm3 voxel).

    Prediction: half of A, all of C only, a 3^3 false positive F, a 2 mm3 speck G, the voxel E.
    Known answer at 1 mm: reference lesions A, B, CD (E < 3 mm3 ignored): A and CD detected, B missed;
    predicted lesions half-A, C, F (G and E ignored): F is the one false positive.
    """
    truth = np.zeros((40, 40, 40), dtype=np.uint8)
    pred = np.zeros_like(truth)
    _cube(truth, (2, 2, 2), (6, 6, 6))  # A
    _cube(truth, (12, 2, 2), (15, 5, 5))  # B, missed
    _cube(truth, (20, 20, 20), (24, 24, 24))  # C
    _cube(truth, (24, 20, 20), (28, 24, 24))  # D, touching C
    truth[35, 35, 35] = 1  # E, 1 mm3
    _cube(pred, (2, 2, 2), (6, 6, 4))  # half of A
    _cube(pred, (20, 20, 20), (24, 24, 24))  # C only
    _cube(pred, (30, 2, 2), (33, 5, 5))  # F, false positive
    _cube(pred, (10, 30, 30), (10 + 1, 30 + 1, 32))  # G, 2 mm3 speck
    pred[35, 35, 35] = 1
    return pred, truth


def test_missed_false_positive_touching_and_too_small(case):
    pred, truth = case
    result = lesion_detection(pred, truth, spacing=1.0)
    assert result["true_lesions"] == 3  # C and D touch: one lesion; E is below 3 mm3
    assert result["detected_lesions"] == 2  # A (50% covered) and C+D (50% covered); B missed
    assert result["pred_lesions"] == 3  # G and the voxel E are below 3 mm3
    assert result["false_positive_lesions"] == 1  # F
    assert result["lesion_tpr"] == pytest.approx(2 / 3)
    assert result["lesion_fdr"] == pytest.approx(1 / 3)
    assert result["lesion_f1"] == pytest.approx(2 / 3)


def test_minimum_size_is_in_mm3_not_voxels(case):
    pred, truth = case
    # at 2 mm voxels the single voxel E is 8 mm3, a lesion: it is then found (and the speck G becomes a lesion too)
    result = lesion_detection(pred, truth, spacing=2.0)
    assert result["true_lesions"] == 4 and result["detected_lesions"] == 3
    assert result["pred_lesions"] == 5 and result["false_positive_lesions"] == 2


@pytest.mark.parametrize("covered, detected", [(2, True), (1, False)])
def test_ten_percent_overlap_rule(covered, detected):
    truth = np.zeros((12, 12, 12), bool)
    truth[2:4, 2:4, 2:7] = True  # 20 voxels
    pred = np.zeros_like(truth)
    pred.flat[np.flatnonzero(truth.ravel())[:covered]] = True
    pred[8:11, 8:11, 8:11] = True  # keep a second predicted lesion so the counts stay defined
    result = lesion_detection(pred, truth, spacing=1.0, min_volume_mm3=1.0)
    assert result["detected_lesions"] == int(detected)  # 2/20 = 10% detects, 1/20 does not


def test_large_prediction_barely_on_a_lesion_is_a_false_positive():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:4, 2:4, 2:4] = True  # 8 voxels
    pred = np.zeros_like(truth)
    pred[2:12, 2:12, 2:4] = True  # 200 voxels, 8 of them (4%) on the lesion
    result = lesion_detection(pred, truth, spacing=1.0)
    assert result["detected_lesions"] == 1 and result["false_positive_lesions"] == 1


def test_corner_touching_lesions_depend_on_connectivity():
    truth = np.zeros((10, 10, 10), bool)
    truth[1:3, 1:3, 1:3] = True
    truth[3:5, 3:5, 3:5] = True  # touches the first cube at one corner only
    assert label_lesions(truth, 1.0, connectivity=3)[1] == 1
    assert label_lesions(truth, 1.0, connectivity=1)[1] == 2


def test_voxel_metrics_use_the_voxel_size():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:9, 5:9, 5:9] = True
    shifted = np.roll(truth, 1, axis=2)  # one slice off
    iso = segmentation_metrics(shifted, truth, spacing=1.0)
    thick = segmentation_metrics(shifted, truth, spacing=(1.0, 1.0, 3.0))
    assert iso["dice"] == pytest.approx(0.75) and thick["dice"] == pytest.approx(0.75)
    assert iso["hd95_mm"] == pytest.approx(1.0) and thick["hd95_mm"] == pytest.approx(3.0)
    assert thick["volume_true_ml"] == pytest.approx(64 * 3.0 / 1000)
    half = segmentation_metrics(truth & (np.arange(20) < 7)[None, None, :], truth, spacing=2.0)
    assert half["abs_volume_difference_ml"] == pytest.approx(32 * 8.0 / 1000)


def test_empty_masks_give_undefined_not_perfect_scores():
    empty = np.zeros((10, 10, 10), bool)
    lesion = empty.copy()
    lesion[2:5, 2:5, 2:5] = True
    both_empty = segmentation_metrics(empty, empty, spacing=1.0)
    assert math.isnan(both_empty["dice"]) and math.isnan(both_empty["lesion_f1"]) and math.isnan(both_empty["hd95_mm"])
    false_alarm = segmentation_metrics(lesion, empty, spacing=1.0)
    assert math.isnan(false_alarm["dice"]) and false_alarm["lesion_f1"] == 0.0 and false_alarm["lesion_fdr"] == 1.0
    missed = segmentation_metrics(empty, lesion, spacing=1.0)
    assert missed["dice"] == 0.0 and missed["lesion_tpr"] == 0.0 and missed["lesion_f1"] == 0.0


def test_summary_pools_lesions_and_skips_undefined_dice(case):
    pred, truth = case
    empty = np.zeros_like(truth)
    rows = [segmentation_metrics(pred, truth, 1.0), segmentation_metrics(empty, empty, 1.0), segmentation_metrics(truth, truth, 1.0)]
    summary = summarize_segmentation(rows)
    assert summary["n_scans"] == 3 and summary["n_scans_with_lesions"] == 2
    assert summary["mean_dice"] == pytest.approx((rows[0]["dice"] + 1.0) / 2)  # the lesion-free scan is left out
    assert summary["true_lesions"] == 6 and summary["detected_lesions"] == 5  # 3 + 0 + 3, 2 + 0 + 3
    assert summary["lesion_tpr"] == pytest.approx(5 / 6)
    assert summary["lesion_fdr"] == pytest.approx(1 / 6)


def test_lesion_table_gives_world_centroids_on_an_oblique_lps_grid():
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([1.0, 1.2, 3.0])
    affine[:3, 3] = [90.0, 110.0, -60.0]
    mask = np.zeros((30, 30, 20), np.uint8)
    mask[4:6, 4:6, 4:6] = 1  # 8 voxels
    mask[10:16, 10:16, 10:12] = 1  # 72 voxels: lesion 1 (largest first)
    table = lesion_table(mask, affine, session="s1")
    assert table["lesion_id"].tolist() == [1, 2] and table["voxels"].tolist() == [72, 8]
    voxel_ml = 1.0 * 1.2 * 3.0 / 1000
    np.testing.assert_allclose(table["volume_ml"], [72 * voxel_ml, 8 * voxel_ml])
    expected = nib.affines.apply_affine(affine, [[12.5, 12.5, 10.5], [4.5, 4.5, 4.5]])
    np.testing.assert_allclose(table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(), expected, atol=1e-6)
    assert len(lesion_table(np.zeros_like(mask), affine)) == 0


def test_qc_figure_is_written(case, tmp_path):
    pred, truth = case
    image = np.random.default_rng(0).normal(size=truth.shape).astype(np.float32)
    path = save_qc_figure({"T1": image, "T2": -image}, pred, tmp_path / "qc" / "s1_qc.png", title="s1")
    assert path.stat().st_size > 5000
    assert save_qc_figure({"T1": image}, np.zeros_like(pred), tmp_path / "empty.png").stat().st_size > 1000


def test_flip_tta_averages_logits_over_flips():
    ramp = torch.arange(4.0).reshape(1, 1, 4, 1, 1)  # a network that is not flip-equivariant

    def network(x):
        return x + ramp

    x = torch.randn(1, 1, 4, 3, 2)
    plain = FlipTTAInferer(SimpleInferer(), flip_axes=[])(x, network)
    torch.testing.assert_close(plain, network(x))
    tta = FlipTTAInferer(SimpleInferer(), flip_axes=[[0]])(x, network)
    torch.testing.assert_close(tta, x + 1.5)  # (ramp + flipped ramp) / 2 = 1.5 everywhere
    with pytest.raises(ValueError, match="flip_axes"):
        FlipTTAInferer(SimpleInferer(), flip_axes=[[]])
