"""The EDSS run's lesion stage: which segmenter its lesion pathway starts from, training one when needed.

EDSS depends on lesion load, which a few dozen scans with one scalar label each cannot teach a network
(the pathway trained from scratch with the EDSS model stays at the trivial baselines). The lesion masks
can: with ``lesion_init: "auto"`` (the default) the EDSS run starts its lesion pathway from

1. the sibling lesion_seg bundle's ``models/model.pt``, when it was trained on this very manifest (its
   provenance record names the manifest's SHA-256) and passes the held-out check;
2. else this run's own lesion stage, ``<ckpt_dir>/lesion_stage/models/model.pt``, when an earlier run
   finished it with the same manifest, training subjects, lesion_seg ``train.json`` and stage settings
   (``stage.json``, written only when the stage's training exited 0: an interrupted stage is trained again);
3. else it trains that stage now: the lesion_seg bundle's defaults on this manifest's training split (and
   fold), its checkpoint chosen on this run's validation split, in a subprocess whose progress is shown.

So the usage line ``python -m monai.bundle run training --config_file bundles/edss/configs/train.json``
needs nothing trained beforehand. The checkpoint then goes through
:func:`monai_ms.engines.init_lesion_pathway` (provenance check, load, freeze) like an explicit path.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ms.bundle.config import override_args
from monai_ms.engines.training.lesion_pathway import (
    AUTO,
    check_lesion_provenance,
    init_lesion_pathway,
    read_provenance,
    training_provenance,
)
from monai_ms.errors import stop_or_raise
from monai_ms.io import sha256_file, write_json

__all__ = ["LESION_STAGE_DIR", "lesion_stage_checkpoint", "start_lesion_pathway", "train_lesion_stage"]

logger = logging.getLogger(__name__)

LESION_STAGE_DIR = "lesion_stage"  # under the EDSS run's ckpt_dir: models/ and eval/ of the stage
STAGE_RECORD = "stage.json"  # written when the stage's training exited 0: what it was trained with


def _stage_record(
    data_manifest: str | os.PathLike, training: Sequence[Mapping[str, Any]], config: Path, settings: Mapping[str, Any]
) -> dict:
    """What a finished lesion stage was trained with; a stage is reused only when all of it matches."""
    return {
        "manifest_sha256": sha256_file(data_manifest),
        "training_subjects": training_provenance(training)["training_subjects"],
        "lesion_seg_train_json_sha256": sha256_file(config),
        "settings": {k: v for k, v in settings.items() if k not in ("data_manifest", "ckpt_dir", "output_dir")},
    }


def _trained_on(checkpoint: Path, manifest_sha256: str) -> bool:
    """Whether ``checkpoint``'s provenance record names this manifest."""
    if not checkpoint.is_file():
        return False
    try:
        record = read_provenance(checkpoint)
    except ValueError:
        return False
    return record is not None and record.get("manifest_sha256") == manifest_sha256


def _sibling_usable(
    sibling: Path,
    manifest_sha256: str,
    held_out: Mapping[str, Sequence[Mapping[str, Any]]],
    modalities: Sequence[str] | None = None,
) -> bool:
    """The lesion_seg bundle's own model, when trained on this manifest and unseen by this run's held-out splits."""
    if not _trained_on(sibling, manifest_sha256):
        if sibling.is_file():
            logger.info(f"lesion stage: {sibling} was not trained on this manifest, so it is not used")
        return False
    try:
        check_lesion_provenance(sibling, held_out, modalities)
    except ValueError as error:
        logger.info(f"lesion stage: {sibling} is not used: {error}")
        return False
    return True


def lesion_stage_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """``<ckpt_dir>/lesion_stage/models/model.pt``: where the EDSS run keeps the segmenter it trained."""
    return Path(ckpt_dir) / LESION_STAGE_DIR / "models" / "model.pt"


def _stage_settings(
    data_manifest: str | os.PathLike, ckpt_dir: str | os.PathLike, fold: int | None, seed: int, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    stage = Path(ckpt_dir) / LESION_STAGE_DIR
    settings: dict[str, Any] = {
        "data_manifest": str(Path(data_manifest).resolve()),
        "ckpt_dir": str((stage / "models").resolve()),
        "output_dir": str((stage / "eval").resolve()),
        "seed": seed,
        **({"fold": fold} if fold is not None else {}),
        **dict(overrides or {}),
    }
    # the command line cannot carry null: a None setting keeps the lesion_seg default
    return {key: value for key, value in settings.items() if value is not None}


def train_lesion_stage(
    data_manifest: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    lesion_bundle: str | os.PathLike,
    fold: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    training: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Train the lesion_seg bundle's defaults on ``data_manifest`` into ``<ckpt_dir>/lesion_stage``.

    Runs ``python -m monai.bundle run training`` of the lesion_seg bundle in a subprocess (its own
    progress bar and log lines are shown), so the stage is exactly what a user gets from that bundle.

    Args:
        data_manifest: the EDSS run's manifest (training and validation splits are used, never testing).
        ckpt_dir: the EDSS run's checkpoint folder.
        lesion_bundle: the lesion_seg bundle folder.
        fold: the EDSS run's fold (``None``: the manifest's own split).
        seed: the run's seed.
        overrides: further lesion_seg overrides (e.g. ``{"epochs": 20}``).
        training: the run's training entries (recorded in ``stage.json`` with the settings).

    Returns:
        the stage's best checkpoint.

    Raises:
        ValueError: no lesion_seg bundle beside this one, or the stage failed (its exit status and where
            its output went).
    """
    stage = Path(ckpt_dir) / LESION_STAGE_DIR
    config = Path(lesion_bundle) / "configs" / "train.json"
    if not config.is_file():
        raise ValueError(
            f"lesion stage: {config} not found, so no lesion segmenter can be trained here (a copy of the EDSS bundle "
            "without its lesion_seg sibling?); pass a trained lesion_seg model.pt as --lesion_init, or --lesion_init ''"
        )
    settings = _stage_settings(data_manifest, ckpt_dir, fold, seed, overrides)
    (stage / STAGE_RECORD).unlink(missing_ok=True)  # an interrupted stage is never taken for a finished one
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config)]
    command += override_args(settings)
    logger.info(
        f"lesion stage: no lesion segmenter trained on this manifest yet, so this run trains one first "
        f"(the lesion_seg bundle's defaults, into {stage}); the EDSS model starts from it"
    )
    result = subprocess.run(command)
    checkpoint = stage / "models" / "model.pt"
    if result.returncode != 0 or not checkpoint.is_file():
        raise ValueError(
            f"lesion stage: training the lesion segmenter failed (exit {result.returncode}); its output is above "
            f"and its files are in {stage}. Fix it, pass a trained lesion_seg model.pt as --lesion_init, or "
            "train without the lesion pathway's start (--lesion_init '')"
        )
    write_json(_stage_record(data_manifest, training, config, settings), stage / STAGE_RECORD)
    return checkpoint


def _stage_finished(
    ckpt_dir: str | os.PathLike,
    data_manifest: str | os.PathLike,
    training: Sequence[Mapping[str, Any]],
    lesion_bundle: Path,
    fold: int | None,
    seed: int,
    overrides: Mapping[str, Any] | None,
) -> bool:
    """Whether ``<ckpt_dir>/lesion_stage`` holds a stage that finished with exactly these inputs and settings."""
    record_path = Path(ckpt_dir) / LESION_STAGE_DIR / STAGE_RECORD
    config = lesion_bundle / "configs" / "train.json"
    if not record_path.is_file() or not lesion_stage_checkpoint(ckpt_dir).is_file() or not config.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    settings = _stage_settings(data_manifest, ckpt_dir, fold, seed, overrides)
    return bool(record == json.loads(json.dumps(_stage_record(data_manifest, training, config, settings))))


def start_lesion_pathway(
    network: Any,
    lesion_init: str | os.PathLike | None,
    bundle_root: str | os.PathLike,
    data_manifest: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    held_out: Mapping[str, Sequence[Mapping[str, Any]]],
    training: Sequence[Mapping[str, Any]],
    fold: int | None = None,
    seed: int = 0,
    freeze: bool = True,
    stage_overrides: Mapping[str, Any] | None = None,
    lesion_key: str | None = "lesion",
    stage_inherited: Mapping[str, Any] | None = None,
    modalities: Sequence[str] | None = None,
    bias_correction: bool | None = None,
) -> bool:
    """The EDSS ``initialize`` step: choose (or train) the segmenter, then :func:`init_lesion_pathway`.

    Args:
        network: a ``DualStreamRegressor`` with a ``lesion_network``.
        lesion_init: ``"auto"`` (see the module docstring), a checkpoint path, or ``""`` / ``None``
            (the pathway learns from scratch with the EDSS model, which does not reach the baselines).
        bundle_root: the EDSS bundle folder (its sibling ``lesion_seg`` is the bundle the stage trains).
        data_manifest: the run's manifest.
        ckpt_dir: the run's checkpoint folder.
        held_out: split name -> entries the segmenter must not have seen (validation, testing).
        training: the run's training entries.
        fold: the run's fold.
        seed: the run's seed.
        freeze: stop gradients into the loaded segmenter.
        stage_overrides: lesion_seg overrides for a stage trained here.
        lesion_key: the manifest's lesion-mask key; empty (a cohort without masks): ``"auto"`` trains no
            stage and the pathway stays untrained, with a warning.
        stage_inherited: the EDSS run's settings the stage takes over (``spacing``, ``label_key``, workers and
            cache settings), so an EDSS run at 1 mm gets a 1 mm segmenter; ``stage_overrides`` win over them.
        modalities: the run's ``modalities``: a segmenter trained on other images is not used (the sibling is
            passed over, a ``lesion_init`` path refused), and the stage is trained on these.
        bias_correction: the run's ``bias_correction``: a segmenter recorded with the other setting is used with
            a warning (:func:`monai_ms.engines.training.lesion_pathway.warn_bias_correction_mismatch`); a stage
            trained here takes it from ``stage_inherited``.

    Returns:
        True when a segmenter was loaded.

    Raises:
        ValueError: as :func:`init_lesion_pathway`, or a failed stage (one line under the bundle CLI).
    """
    if lesion_init is not None and str(lesion_init) == AUTO and not lesion_key:
        logger.warning(
            "lesion_init auto: no lesion masks (lesion_key is empty), so no lesion stage can be trained and the "
            "EDSS model learns without a lesion load; pass a trained lesion_seg model.pt as --lesion_init to use one"
        )
        if getattr(network, "lesion_from_images", False):
            # nothing can teach it without masks: frozen, its (constant) feature is stored once, not run every step
            network.lesion_network.requires_grad_(False)
        return False
    stage_overrides = {**dict(stage_inherited or {}), **dict(stage_overrides or {})}
    if lesion_init is not None and str(lesion_init) == AUTO:
        lesion_bundle = Path(bundle_root).parent / "lesion_seg"
        sibling = lesion_bundle / "models" / "model.pt"
        own = lesion_stage_checkpoint(ckpt_dir)
        if _sibling_usable(sibling, sha256_file(data_manifest), held_out, modalities):
            lesion_init = str(sibling)
        elif _stage_finished(ckpt_dir, data_manifest, training, lesion_bundle, fold, seed, stage_overrides):
            logger.info(f"lesion stage: reusing {own}, trained by an earlier run with the same manifest, subjects and settings")
            lesion_init = str(own)
        else:
            try:
                lesion_init = str(train_lesion_stage(data_manifest, ckpt_dir, lesion_bundle, fold, seed, stage_overrides, training))
            except ValueError as error:
                stop_or_raise(error, f"{error}\n\nstopped before training.")
    return init_lesion_pathway(
        network, lesion_init, bundle_root, held_out, freeze=freeze, modalities=modalities, bias_correction=bias_correction
    )
