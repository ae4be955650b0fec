"""The EDSS run's lesion stage: which segmenter its lesion pathway starts from, training one when needed.

EDSS depends on lesion load, which a few dozen scans with one scalar label each cannot teach a network
(the pathway trained from scratch with the EDSS model stays at the trivial baselines). The lesion masks
can: with ``lesion_init: "auto"`` (the default) the EDSS run starts its lesion pathway from

1. the sibling lesion_seg bundle's ``models/model.pt``, when it was trained on this very manifest (its
   provenance record names the manifest's SHA-256) and passes the held-out check;
2. else this run's own lesion stage, ``<ckpt_dir>/lesion_stage/models/model.pt``, when an earlier run
   trained it on the same manifest and the same training subjects;
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

from monai_ms.engines.lesion_pathway import AUTO, init_lesion_pathway, read_provenance
from monai_ms.io import sha256_file

__all__ = ["LESION_STAGE_DIR", "lesion_stage_checkpoint", "start_lesion_pathway", "train_lesion_stage"]

logger = logging.getLogger(__name__)

LESION_STAGE_DIR = "lesion_stage"  # under the EDSS run's ckpt_dir: models/ and eval/ of the stage


def _subjects(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(entry["subject"]) for entry in entries if entry.get("subject") is not None})


def _trained_here(checkpoint: Path, manifest_sha256: str, training: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether ``checkpoint``'s provenance names this manifest (and, if given, these training subjects)."""
    if not checkpoint.is_file():
        return False
    try:
        record = read_provenance(checkpoint)
    except ValueError:
        return False
    if record is None or record.get("manifest_sha256") != manifest_sha256:
        return False
    return training is None or sorted(map(str, record["training_subjects"])) == _subjects(training)


def lesion_stage_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """``<ckpt_dir>/lesion_stage/models/model.pt``: where the EDSS run keeps the segmenter it trained."""
    return Path(ckpt_dir) / LESION_STAGE_DIR / "models" / "model.pt"


def train_lesion_stage(
    data_manifest: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    lesion_bundle: str | os.PathLike,
    fold: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
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

    Returns:
        the stage's best checkpoint.

    Raises:
        ValueError: the stage failed (its exit status and where its output went).
    """
    stage = Path(ckpt_dir) / LESION_STAGE_DIR
    config = Path(lesion_bundle) / "configs" / "train.json"
    settings: dict[str, Any] = {
        "data_manifest": str(Path(data_manifest).resolve()),
        "ckpt_dir": str((stage / "models").resolve()),
        "output_dir": str((stage / "eval").resolve()),
        "seed": seed,
        **({"fold": fold} if fold is not None else {}),
        **dict(overrides or {}),
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config)]
    for key, value in settings.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
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
    return checkpoint


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
        lesion_init = ""
    if lesion_init is not None and str(lesion_init) == AUTO:
        manifest_sha256 = sha256_file(data_manifest)
        sibling = Path(bundle_root).parent / "lesion_seg" / "models" / "model.pt"
        own = lesion_stage_checkpoint(ckpt_dir)
        if _trained_here(sibling, manifest_sha256, None):
            lesion_init = str(sibling)
        elif _trained_here(own, manifest_sha256, training):
            logger.info(f"lesion stage: reusing {own}, trained on this manifest's training subjects by an earlier run")
            lesion_init = str(own)
        else:
            if sibling.is_file():
                logger.info(f"lesion stage: {sibling} was not trained on this manifest, so it is not used")
            try:
                lesion_init = str(
                    train_lesion_stage(data_manifest, ckpt_dir, Path(bundle_root).parent / "lesion_seg", fold, seed, stage_overrides)
                )
            except ValueError as error:
                from monai_ms.bundle.config import running_workflow

                if running_workflow() is None:
                    raise
                print(f"{error}\n\nstopped before training.", file=sys.stderr)
                raise SystemExit(1) from None
    return init_lesion_pathway(network, lesion_init, bundle_root, held_out, freeze=freeze)
