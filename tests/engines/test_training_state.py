"""Resume after SIGKILL, determinism, atomic checkpoints and fault messages, through real bundle runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, config_arg, override_args, run_bundle
from ignite.engine import Engine

from monai_ms.engines import NonFiniteLossError, StartValidationHandler, TrainingFaultHandler, save_checkpoint
from monai_ms.engines.training.state import AtomicDiskSaver, read_last_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 3


def _overrides(manifest: Path, run_dir: Path, **extra) -> dict:
    return {
        **TINY_OVERRIDES,
        "epochs": EPOCHS,
        "data_manifest": str(manifest),
        "output_dir": str(run_dir / "eval"),
        "ckpt_dir": str(run_dir / "models"),
        "lesion_init": "",  # no machine-dependent default: the pathway learns from scratch
        **extra,
    }


def _log(run_dir: Path) -> pd.DataFrame:
    """The run's training log without ``wall_clock`` (when each validation ended: a time, not a result)."""
    return pd.read_csv(run_dir / "eval" / "training_log.csv").drop(columns="wall_clock")


@pytest.fixture(scope="module")
def uninterrupted(tiny_manifest, tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    check(run_bundle("edss", "training", ["train"], _overrides(tiny_manifest, run_dir)))
    return _log(run_dir)


def test_two_seeded_cpu_runs_give_identical_losses_and_metrics(uninterrupted, tiny_manifest, tmp_path):
    check(run_bundle("edss", "training", ["train"], _overrides(tiny_manifest, tmp_path)))
    again = _log(tmp_path)
    assert uninterrupted["epoch"].tolist() == list(range(1, EPOCHS + 1))
    pd.testing.assert_frame_equal(again, uninterrupted, check_exact=True)


def test_sigkill_mid_epoch_then_resume_reaches_the_same_end(uninterrupted, tiny_manifest, tmp_path):
    overrides = _overrides(tiny_manifest, tmp_path)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg("edss", "train"),
               *override_args(overrides)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    last = tmp_path / "models" / "last.pt"
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as run:
        deadline = time.monotonic() + 600
        while not last.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = read_last_checkpoint(last)["trainer"]["epoch"]
    assert 1 <= killed_at < EPOCHS
    # a kill during a save can leave only a hidden temporary file, never a partial last.pt or model.pt
    assert {p.name for p in (tmp_path / "models").glob("*.pt")} <= {"last.pt", "model.pt"}

    result = check(run_bundle("edss", "training", ["train"], {**overrides, "resume": "True"}))
    assert f"resumed from {last} at epoch {killed_at}" in result.stdout + result.stderr
    resumed = _log(tmp_path)
    assert resumed["epoch"].tolist() == list(range(1, EPOCHS + 1))  # the curve before the kill is kept
    assert read_last_checkpoint(last)["trainer"]["epoch"] == EPOCHS
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)  # the state_dict itself
    assert best and all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    # epochs are seeded by (seed, epoch): the resumed run replays exactly what an uninterrupted one did
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=False, rtol=1e-5)


def test_resume_without_a_checkpoint_stops_with_one_line(tiny_manifest, tmp_path):
    result = run_bundle("edss", "training", ["train"], _overrides(tiny_manifest, tmp_path, resume="True"))
    assert result.returncode == 1
    assert "cannot resume" in result.stderr and "last.pt" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_folder_stops_before_training(tiny_manifest, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_bundle("edss", "training", ["train"], _overrides(tiny_manifest, tmp_path, ckpt_dir=str(blocker / "models")))
    assert result.returncode == 1
    assert f"cannot write to the output folder {blocker / 'models'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_exploding_loss_stops_with_what_is_saved_and_how_to_resume(tiny_manifest, tmp_path):
    result = run_bundle("edss", "training", ["train"], _overrides(tiny_manifest, tmp_path, learning_rate=1e30, epochs=6))
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "NonFiniteLossError" in log and "the training loss is" in log
    assert "saved:" in log
    assert ("--resume True" in log) or ("the first epoch did not complete" in log)
    if (tmp_path / "models" / "last.pt").exists():  # whatever was saved holds finite weights
        state = read_last_checkpoint(tmp_path / "models" / "last.pt")
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_fault_handler_names_the_epoch_of_a_nan_loss(tmp_path):
    engine = Engine(lambda e, batch: {"loss": torch.tensor(float("nan"))})
    TrainingFaultHandler(tmp_path).attach(engine)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, iteration 1"):
        engine.run([0, 1], max_epochs=1)


class _FailsToPickle:
    def __reduce__(self):
        raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "bad": _FailsToPickle()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_fixed_name_saver_replaces_the_best_model_without_removing_it_first(tmp_path):
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"v": torch.tensor(1.0)}, "ignored.pt")
    saver.remove("ignored.pt")  # ignite calls this before saving a better model: the file must stay
    assert (tmp_path / "model.pt").is_file()
    saver({"v": torch.tensor(2.0)}, "ignored.pt")
    assert torch.load(tmp_path / "model.pt", weights_only=True)["v"] == 2.0


class _Validator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_start_validation_runs_before_the_first_epoch_of_a_fresh_run_only():
    validator = _Validator()
    trainer = Engine(lambda engine, batch: None)
    StartValidationHandler(validator).attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert validator.epochs == [0]  # once, at epoch 0, not per epoch
    resumed = Engine(lambda engine, batch: None)
    StartValidationHandler(validator).attach(resumed)
    resumed.load_state_dict({"epoch": 1, "max_epochs": 3, "epoch_length": 2})  # what a resume restores
    resumed.run([0, 1], max_epochs=3)
    assert validator.epochs == [0]  # a resumed run does not validate its start again
    disabled = Engine(lambda engine, batch: None)
    StartValidationHandler(validator, enabled=False).attach(disabled)
    disabled.run([0], max_epochs=1)
    assert validator.epochs == [0]
