"""Where a checkpoint's training subjects are recorded, and the EDSS lesion pathway's start from one.

The EDSS network's lesion pathway starts from a trained lesion segmenter (the lesion_seg bundle's
``models/model.pt``). A segmenter trained on patients of the EDSS run's own validation or test split
has seen their lesion masks, so its EDSS figures would be optimistic; :func:`init_lesion_pathway`
refuses it. To know, every bundle's best checkpoint carries a provenance record beside it
(``model.pt`` -> ``model.provenance.json``, written atomically with the checkpoint by
:class:`~monai_ms.engines.AtomicCheckpointSaver`): the training and validation subjects and the
manifest it came from.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ms.errors import stop_or_raise
from monai_ms.io import sha256_file

__all__ = [
    "AUTO",
    "provenance_path",
    "training_provenance",
    "read_provenance",
    "resolve_lesion_init",
    "check_lesion_provenance",
    "warn_bias_correction_mismatch",
    "init_lesion_pathway",
]

logger = logging.getLogger(__name__)

AUTO = "auto"  # lesion_init: the sibling lesion_seg bundle's model when it exists, else from scratch


def provenance_path(checkpoint: str | os.PathLike) -> Path:
    """``models/model.pt`` -> ``models/model.provenance.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.provenance.json")


def _subjects(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(entry["subject"]) for entry in entries if entry.get("subject") is not None})


def training_provenance(
    training: Sequence[Mapping[str, Any]],
    validation: Sequence[Mapping[str, Any]] = (),
    manifest: str | os.PathLike | None = None,
    task: str | None = None,
    modalities: Sequence[str] | None = None,
    bias_correction: bool | None = None,
) -> dict[str, Any]:
    """The record written beside a best checkpoint.

    Args:
        training: the training split's entries (each with ``subject``).
        validation: the validation split's entries (the checkpoint was selected on them).
        manifest: the manifest file, recorded with its SHA-256.
        task: the bundle's task name.
        modalities: the bundle's ``modalities`` (the network's input images, in channel order).
        bias_correction: the bundle's ``bias_correction`` (whether the network saw N4-corrected images).

    Returns:
        ``{"task", "manifest", "manifest_sha256", "training_subjects", "validation_subjects"}`` and, when
        given, ``"modalities"`` and ``"bias_correction"``.

    Examples:
        >>> training_provenance([{"subject": "P2"}, {"subject": "P1"}])["training_subjects"]
        ['P1', 'P2']
    """
    return {
        "task": task,
        "manifest": None if manifest is None else str(Path(manifest).resolve()),
        "manifest_sha256": None if manifest is None or not Path(manifest).is_file() else sha256_file(manifest),
        "training_subjects": _subjects(training),
        "validation_subjects": _subjects(validation),
        **({"modalities": list(modalities)} if modalities is not None else {}),
        **({"bias_correction": bool(bias_correction)} if bias_correction is not None else {}),
    }


def read_provenance(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance record of ``checkpoint``, or None when it has none (trained before monai_ms 0.3).

    Raises:
        ValueError: the record exists but is not a JSON object with ``training_subjects``.
    """
    path = provenance_path(checkpoint)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the checkpoint's provenance record: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("training_subjects"), list):
        raise ValueError(f"{path}: a provenance record must be a JSON object with a 'training_subjects' list")
    return record


def resolve_lesion_init(lesion_init: str | os.PathLike | None, bundle_root: str | os.PathLike) -> str:
    """The segmenter checkpoint the EDSS lesion pathway starts from, or ``""`` for a start from scratch.

    Args:
        lesion_init: ``"auto"`` (the sibling ``lesion_seg/models/model.pt`` when it exists, else from
            scratch), ``""`` or None (from scratch), or a checkpoint path, which must exist.
        bundle_root: the EDSS bundle folder (``bundles/edss``).

    Raises:
        ValueError: an explicit path that is not a file.
    """
    if not lesion_init:
        return ""
    if str(lesion_init) == AUTO:
        sibling = Path(bundle_root).parent / "lesion_seg" / "models" / "model.pt"
        if sibling.is_file():
            return str(sibling)
        logger.warning(
            f"lesion_init auto: no lesion segmenter at {sibling}, so the lesion pathway is trained from scratch "
            "with the EDSS model, which a small cohort does not teach well; train the lesion_seg bundle first"
        )
        return ""
    path = Path(lesion_init)
    if not path.is_file():
        raise ValueError(f"lesion_init: {path} is not a file (give a lesion_seg model.pt, 'auto' or '')")
    return str(path)


# a checkpoint recorded before the modalities setting (0.4.x and earlier) was trained on T1 + T2
RECORDED_DEFAULT_MODALITIES = ("t1", "t2")


def check_lesion_provenance(
    checkpoint: str | os.PathLike,
    held_out: Mapping[str, Sequence[Mapping[str, Any]]],
    modalities: Sequence[str] | None = None,
) -> None:
    """Refuse a segmenter trained on subjects of the EDSS run's held-out splits, or on other images.

    Args:
        checkpoint: the segmenter's ``model.pt``.
        held_out: split name -> entries of the EDSS run that must be unseen (validation, testing).
        modalities: the EDSS run's ``modalities``; the segmenter must have been trained on the same list
            (its input channels). None: not checked.

    Raises:
        ValueError: the checkpoint has no provenance record, its training subjects include held-out
            subjects (the first few are named), or it was trained on other modalities (both lists named).
    """
    record = read_provenance(checkpoint)
    if record is None:
        raise ValueError(
            f"lesion_init: {checkpoint} has no provenance record ({provenance_path(checkpoint).name}), so it cannot be "
            "shown to be unseen by this run's validation and test subjects (a model trained before 0.3.0, or one "
            "unpacked from an exported bundle, which leaves the subject ids out); retrain the lesion_seg bundle on "
            "this manifest, or start from scratch with --lesion_init ''"
        )
    if modalities is not None:
        recorded = list(record.get("modalities", RECORDED_DEFAULT_MODALITIES))
        if recorded != list(modalities):
            raise ValueError(
                f"lesion_init: {checkpoint} was trained on modalities {recorded}, and this run reads {list(modalities)}; "
                "train lesion_seg with the same --modalities, or leave lesion_init at auto (a lesion stage is trained)"
            )
    trained_on = set(map(str, record["training_subjects"]))
    selected_on = set(map(str, record.get("validation_subjects", [])))
    for split, entries in held_out.items():
        # the segmenter's own validation subjects chose its checkpoint: they must not be test subjects here
        seen = trained_on | selected_on if split == "testing" else trained_on
        leaked = sorted(seen.intersection(_subjects(entries)))
        if leaked:
            names = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
            raise ValueError(
                f"lesion_init: {checkpoint} was trained or selected on {len(leaked)} subject(s) of this run's {split} split "
                f"({names}); its lesion masks would leak into the {split} figures. Train lesion_seg on this "
                "manifest's training split (the same manifest and fold), or use --lesion_init ''"
            )


def warn_bias_correction_mismatch(checkpoint: str | os.PathLike, bias_correction: bool | None) -> bool:
    """One WARNING line when ``checkpoint`` saw N4-corrected images and this run does not, or the reverse.

    Not refused, unlike other modalities: the channels match and the segmenter still runs; N4 only takes a
    smooth multiplicative field out, a shift like a shared bundle meets on another scanner. A record without
    the setting (trained before it was recorded) is not checked.

    Returns:
        True when the settings differ.
    """
    record = read_provenance(checkpoint) if bias_correction is not None else None
    if record is None or "bias_correction" not in record or bool(record["bias_correction"]) == bool(bias_correction):
        return False
    logger.warning(
        f"lesion_init: {checkpoint} was trained with bias_correction {str(bool(record['bias_correction'])).lower()} and this "
        f"run reads images with bias_correction {str(bool(bias_correction)).lower()}; its lesion features will see other "
        f"intensities than it was trained on. Pass --bias_correction {bool(record['bias_correction'])} to match it"
    )
    return True


def init_lesion_pathway(
    network: Any,
    lesion_init: str | os.PathLike | None,
    bundle_root: str | os.PathLike,
    held_out: Mapping[str, Sequence[Mapping[str, Any]]],
    freeze: bool = True,
    modalities: Sequence[str] | None = None,
    bias_correction: bool | None = None,
) -> bool:
    """Start the EDSS lesion pathway from a checked segmenter checkpoint (the ``initialize`` step).

    Args:
        network: a ``DualStreamRegressor`` with a ``lesion_network``.
        lesion_init: see :func:`resolve_lesion_init`.
        bundle_root: the EDSS bundle folder.
        held_out: see :func:`check_lesion_provenance`.
        freeze: stop gradients into the loaded segmenter.
        modalities: the run's ``modalities`` (see :func:`check_lesion_provenance`).
        bias_correction: the run's ``bias_correction``; a segmenter recorded with the other setting is used,
            with one WARNING line (see :func:`warn_bias_correction_mismatch`). None: not checked.

    Returns:
        True when a segmenter was loaded, False for a start from scratch.

    Raises:
        ValueError: see :func:`resolve_lesion_init`, :func:`check_lesion_provenance` and
            ``DualStreamRegressor.load_lesion_network``.
    """
    try:
        checkpoint = resolve_lesion_init(lesion_init, bundle_root)
        if not checkpoint:
            return False
        check_lesion_provenance(checkpoint, held_out, modalities)
        warn_bias_correction_mismatch(checkpoint, bias_correction)
        return bool(network.load_lesion_network(checkpoint, freeze=freeze))
    except ValueError as error:
        stop_or_raise(error, f"{error}\n\nstopped before training.")  # one line under python -m monai.bundle
