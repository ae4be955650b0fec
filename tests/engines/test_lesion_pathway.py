"""Provenance of the EDSS lesion pathway: which segmenter it may start from."""

from __future__ import annotations

import json

import pytest
import torch

from monai_ms.engines import AtomicCheckpointSaver, WarmupEarlyStopHandler, init_lesion_pathway, read_provenance, training_provenance
from monai_ms.engines.training.lesion_pathway import provenance_path, resolve_lesion_init
from monai_ms.io import write_json
from monai_ms.networks import BrainSegmenter3D, DualStreamRegressor

TINY = (4, 8, 8, 8)


def _regressor() -> DualStreamRegressor:
    segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
    return DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter)


def _entries(*subjects: str) -> list[dict]:
    return [{"subject": s, "session": f"{s}-{k}"} for s in subjects for k in (1, 2)]


@pytest.fixture
def segmenter(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lesion_seg" / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(_regressor().lesion_network.state_dict(), path)
    return path


def test_a_segmenter_trained_on_held_out_subjects_is_refused(segmenter) -> None:
    write_json(training_provenance(_entries("P1", "P2", "P7")), provenance_path(segmenter))
    held_out = {"validation": _entries("P5", "P6"), "testing": _entries("P7", "P8")}
    with pytest.raises(ValueError, match=r"trained or selected on 1 subject\(s\) of this run's testing split \(P7\)"):
        init_lesion_pathway(_regressor(), str(segmenter), segmenter.parents[2] / "edss", held_out)
    # the same segmenter is accepted by a run whose held-out subjects it never saw, and loaded frozen
    network = _regressor()
    assert init_lesion_pathway(network, str(segmenter), segmenter.parents[2] / "edss", {"validation": _entries("P5")})
    assert not any(p.requires_grad for p in network.lesion_network.parameters())


def test_a_segmenter_selected_on_test_subjects_is_refused(segmenter) -> None:
    # chosen (early stopping, best checkpoint) on P7: fine for this run's validation split, not for its test split
    write_json(training_provenance(_entries("P1", "P2"), _entries("P7")), provenance_path(segmenter))
    edss_root = segmenter.parents[2] / "edss"
    assert init_lesion_pathway(_regressor(), str(segmenter), edss_root, {"validation": _entries("P7"), "testing": _entries("P8")})
    with pytest.raises(ValueError, match=r"trained or selected on 1 subject\(s\) of this run's testing split \(P7\)"):
        init_lesion_pathway(_regressor(), str(segmenter), edss_root, {"validation": _entries("P5"), "testing": _entries("P7")})


def test_a_segmenter_without_a_record_is_refused(segmenter) -> None:
    with pytest.raises(ValueError, match="has no provenance record"):
        init_lesion_pathway(_regressor(), str(segmenter), segmenter.parents[2] / "edss", {"validation": _entries("P5")})


def test_a_segmenter_from_other_bias_correction_is_used_with_one_warning(segmenter, caplog) -> None:
    """lesion_seg 0.6.0 trains on N4-corrected images and EDSS reads uncorrected ones by default: the record says
    which, and the EDSS run says, in one line, that its lesion features see other intensities and how to match."""
    edss_root, held_out = segmenter.parents[2] / "edss", {"validation": _entries("P5")}
    write_json(training_provenance(_entries("P1"), bias_correction=True), provenance_path(segmenter))
    assert read_provenance(segmenter)["bias_correction"] is True
    with caplog.at_level("WARNING"):
        assert init_lesion_pathway(_regressor(), str(segmenter), edss_root, held_out, bias_correction=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "bias_correction true" in warnings[0] and "--bias_correction True" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same setting, or a record from before it was kept: nothing to say
        assert init_lesion_pathway(_regressor(), str(segmenter), edss_root, held_out, bias_correction=True)
        write_json(training_provenance(_entries("P1")), provenance_path(segmenter))
        assert init_lesion_pathway(_regressor(), str(segmenter), edss_root, held_out, bias_correction=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_lesion_init_auto_explicit_and_empty(segmenter, tmp_path, caplog) -> None:
    edss_root = segmenter.parents[2] / "edss"
    assert resolve_lesion_init("auto", edss_root) == str(segmenter)
    assert resolve_lesion_init("", edss_root) == "" and resolve_lesion_init(None, edss_root) == ""
    with caplog.at_level("WARNING"):
        assert resolve_lesion_init("auto", tmp_path / "elsewhere" / "edss") == ""
    assert "trained from scratch" in caplog.text
    with pytest.raises(ValueError, match="lesion_init: .*missing.pt is not a file"):
        resolve_lesion_init(str(tmp_path / "missing.pt"), edss_root)


def test_the_best_checkpoint_carries_its_training_subjects(tmp_path) -> None:
    from ignite.engine import Engine, Events

    network = torch.nn.Linear(2, 1)
    record = training_provenance(_entries("P2", "P1"), _entries("P3"), task="lesion_seg")
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": network}, save_key_metric=True,
                                  key_metric_filename="model.pt", provenance=record)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.metrics = {"val_dice": 0.5}
    evaluator.state.key_metric_name = "val_dice"
    saver.attach(evaluator)
    evaluator.fire_event(Events.EPOCH_COMPLETED)
    assert (tmp_path / "model.pt").is_file()
    stored = read_provenance(tmp_path / "model.pt")
    assert stored["training_subjects"] == ["P1", "P2"] and stored["validation_subjects"] == ["P3"]
    (tmp_path / "model.provenance.json").write_text(json.dumps({"subjects": []}))
    with pytest.raises(ValueError, match="'training_subjects' list"):
        read_provenance(tmp_path / "model.pt")


def test_early_stopping_ignores_a_spike_during_the_warm_up() -> None:
    from ignite.engine import Engine, Events

    def run(warmup: int) -> int:
        # a spike at epoch 1, then a slow start: 0.05 from epoch 6 on
        values = iter([0.14, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05, 0.05, 0.05, 0.05])
        trainer = Engine(lambda engine, batch: None)
        evaluator = Engine(lambda engine, batch: None)
        stop = WarmupEarlyStopHandler(patience=3, score_function=lambda engine: engine.state.metrics["dice"], warmup_epochs=warmup)
        stop.set_trainer(trainer)
        stop.attach(evaluator)

        @trainer.on(Events.EPOCH_COMPLETED)
        def validate(engine: Engine) -> None:
            evaluator.state.metrics = {"dice": next(values)}
            evaluator.fire_event(Events.EPOCH_COMPLETED)

        trainer.run([0], max_epochs=10)
        return trainer.state.epoch

    assert run(warmup=0) == 4  # MONAI's rule: the epoch-1 spike ends the run at epoch 4
    # the spike is ignored: the bar is epoch 3's 0.0, epoch 6 improves on it, and patience ends at epoch 9
    assert run(warmup=2) == 9
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        WarmupEarlyStopHandler(patience=3, score_function=lambda e: 0.0, warmup_epochs=-1)


def test_lesion_stage_is_reused_only_when_it_finished_with_the_same_inputs(segmenter, tmp_path) -> None:
    """``lesion_init auto`` reuses ``<ckpt_dir>/lesion_stage`` only with its ``stage.json`` (written when the stage's
    training exited 0) matching the manifest, subjects, lesion_seg config and settings of this run."""
    from monai_ms.bundle import lesion_stage as stage_module

    lesion_bundle = tmp_path / "bundles" / "lesion_seg"
    (lesion_bundle / "configs").mkdir(parents=True)
    (lesion_bundle / "configs" / "train.json").write_text('{"epochs": 40}')
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    training = _entries("P1", "P2")
    ckpt_dir = tmp_path / "edss_models"
    checkpoint = stage_module.lesion_stage_checkpoint(ckpt_dir)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(segmenter.read_bytes())
    finished = lambda **changes: stage_module._stage_finished(  # noqa: E731
        ckpt_dir, manifest, changes.get("training", training), lesion_bundle, None, 0, changes.get("overrides", {"epochs": 24})
    )
    assert not finished(), "a stage without stage.json (interrupted) must be trained again"
    settings = stage_module._stage_settings(manifest, ckpt_dir, None, 0, {"epochs": 24})
    record = stage_module._stage_record(manifest, training, lesion_bundle / "configs" / "train.json", settings)
    write_json(record, checkpoint.parents[1] / stage_module.STAGE_RECORD)
    assert finished()
    assert not finished(overrides={"epochs": 40})  # other stage settings
    assert not finished(training=_entries("P1", "P3"))  # other training subjects
    (lesion_bundle / "configs" / "train.json").write_text('{"epochs": 80}')
    assert not finished()  # the lesion_seg defaults changed since


def test_sibling_lesion_model_that_saw_held_out_subjects_is_passed_over(segmenter, tmp_path) -> None:
    from monai_ms.bundle.lesion_stage import _sibling_usable

    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    write_json(training_provenance(_entries("P1", "P7"), manifest=manifest), provenance_path(segmenter))
    sha = json.loads(provenance_path(segmenter).read_text())["manifest_sha256"]
    assert _sibling_usable(segmenter, sha, {"validation": _entries("P5")})
    # trained on a subject of this run's test split (another fold, say): not used, and not an error either
    assert not _sibling_usable(segmenter, sha, {"validation": _entries("P5"), "testing": _entries("P7")})
    assert not _sibling_usable(segmenter, "another manifest", {"validation": _entries("P5")})
