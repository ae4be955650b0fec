"""Determinism as users run it: two seeded CPU runs with the default DataLoader workers (2) and the
default cache fill (the workers fill the RAM cache during epoch 1) give identical losses and metrics.

bundles/brain_age is used because its default chain augments (random transforms run in the workers).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle

from monai_ms.engines.training.state import read_last_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 2


def test_two_seeded_runs_with_the_default_workers_and_cache_fill_are_identical(tiny_manifest, tmp_path):
    defaults = json.loads((REPO / "bundles" / "brain_age" / "configs" / "train.json").read_text())
    # what users run: these are left at their defaults below
    keys = ("num_workers", "cache", "cache_fill", "augment", "bias_correction")
    assert tuple(defaults[k] for k in keys) == (2, "memory", "workers", True, True)
    tiny = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("num_workers", "bias_correction")}
    logs, states = [], []
    for run in ("first", "second"):
        overrides = {**tiny, "epochs": EPOCHS, "data_manifest": str(tiny_manifest),
                     "output_dir": str(tmp_path / run / "eval"), "ckpt_dir": str(tmp_path / run / "models")}
        check(run_bundle("brain_age", "training", ["train"], overrides))
        # wall_clock: when each validation ended (for benchmarks/time_to_accuracy.py), not a result
        logs.append(pd.read_csv(tmp_path / run / "eval" / "training_log.csv").drop(columns="wall_clock"))
        states.append(read_last_checkpoint(tmp_path / run / "models" / "last.pt", map_location="cpu")["model"])
    assert logs[0]["epoch"].tolist() == list(range(0, EPOCHS + 1))  # 0: the fitted start, validated before training
    assert {"train_loss", "val_mae", "val_rmse"} <= set(logs[0].columns)
    pd.testing.assert_frame_equal(logs[1], logs[0], check_exact=True)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "the two runs end at different weights"
