"""``python -m monai.bundle run ... --tracking mlflow`` with the bundles' configs, read back through MLflow's client.

One real 1-epoch training and one evaluation of the sex bundle (the fastest) log into MLflow's default
SQLite store under the run's output folder; the other bundles are checked where ``--tracking`` patches
them (each engine gets MONAI's ``MLFlowHandler`` after monai_ms's ``MLflowRunLogger``).
Skipped when MLflow is not installed (``pip install -e .[mlflow]``).
"""

from __future__ import annotations

import json
import math

import pytest
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install -e .[mlflow]")

pytestmark = pytest.mark.slow

BUNDLES = ("edss", "lesion_seg", "brain_age", "sex")


@pytest.fixture(scope="module")
def tracked_runs(tiny_manifest, tmp_path_factory):
    """Train the sex bundle 1 epoch and evaluate it, both with ``--tracking mlflow``; return the runs."""
    out = tmp_path_factory.mktemp("tracked")
    overrides = {**TINY_OVERRIDES, "epochs": 1, "data_manifest": str(tiny_manifest),
                 "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models")}
    check(run_bundle("sex", "training", ["train"], {**overrides, "tracking": "mlflow"}))
    check(run_bundle("sex", "evaluating", ["train", "evaluate"], {**overrides, "tracking": "mlflow"}))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    return client, runs, out


def test_training_run_has_settings_per_epoch_metrics_and_learning_curve(tracked_runs):
    client, runs, out = tracked_runs
    assert len(runs) == 2, [r.info.run_name for r in runs]
    train = runs[0]
    assert train.info.status == "FINISHED"
    params = train.data.params
    assert params["epochs"] == "1" and params["max_epochs"] == "1" and params["task"] == "sex"
    assert json.loads(params["spacing"]) == TINY_OVERRIDES["spacing"]
    assert float(params["learning_rate"]) == json.loads((REPO / "bundles/sex/configs/train.json").read_text())["learning_rate"]
    # per-epoch: the learning curve's mean training loss and the validator's metrics, at step = epoch 1
    history = client.get_metric_history(train.info.run_id, "epoch_train_loss")
    log = (out / "eval" / "training_log.csv").read_text().splitlines()
    assert [m.step for m in history] == [1] and len(log) == 2
    assert math.isclose(history[0].value, float(log[1].split(",")[log[0].split(",").index("train_loss")]), rel_tol=1e-9)
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_accuracy")] == [1]
    assert "train_loss" in train.data.metrics  # MONAI's iteration loss (a tuple before MLflowRunLogger unwraps it)
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"learning_curve.png", "training_log.csv"} <= artifacts


def test_evaluation_run_has_the_final_metrics_and_pictures(tracked_runs):
    client, runs, out = tracked_runs
    evaluation = runs[1]
    report = json.loads((out / "eval" / "metrics.json").read_text())
    metrics = evaluation.data.metrics
    assert metrics["testing_n"] == report["model"]["n"]
    assert math.isclose(metrics["testing_accuracy"], report["model"]["accuracy"], rel_tol=1e-9)
    for name, values in report["baselines"].items():
        assert math.isclose(metrics[f"testing_baseline_{name}_brier"], values["brier"], rel_tol=1e-9)
    assert evaluation.data.params["eval_split"] == "testing"
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"roc_curve.png", "confusion_matrix.png", "metrics.json", "predictions.csv"} <= artifacts
    # the uploaded picture is the file the evaluation wrote
    local = client.download_artifacts(evaluation.info.run_id, "roc_curve.png", str(out / "download"))
    assert open(local, "rb").read() == (out / "eval" / "roc_curve.png").read_bytes()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_tracking_patches_every_engine_of_every_bundle(bundle, tmp_path):
    """Where ``--tracking mlflow`` puts its handlers: after monai_ms's logger, on trainer, validator, evaluator."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    configs = REPO / "bundles" / bundle / "configs"
    for second, lists in ((None, ("train#handlers", "validate#handlers")), ("evaluate.json", ("handlers",))):
        files = [str(configs / "train.json")] + ([str(configs / second)] if second else [])
        workflow = ConfigWorkflow(config_file=files, meta_file=str(configs / "metadata.json"),
                                  workflow_type="train" if second is None else "infer", output_dir=str(tmp_path))
        workflow.patch_bundle_tracking(workflow.parser, DEFAULT_MLFLOW_SETTINGS)
        for handlers_id in lists:
            targets = [h.get("_target_") for h in workflow.parser[handlers_id] if isinstance(h, dict)]
            assert targets[-1] == "MLFlowHandler", (bundle, handlers_id, targets)
        own = "train#handlers" if second is None else "evaluate#handlers"
        assert any(str(h.get("_target_", "")).endswith("MLflowRunLogger") for h in workflow.parser[own] if isinstance(h, dict))
        if second:
            # the evaluator runs its own handlers plus the patched top-level list
            assert workflow.parser["evaluate#evaluator#val_handlers"].replace("::", "#") == "$@evaluate#handlers + @handlers"
