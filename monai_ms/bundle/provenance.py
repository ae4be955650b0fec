"""Where an evaluation's numbers come from: split, manifest, checkpoint, bundle version, overrides.

Called from each bundle's ``evaluate.json`` (``"provenance": "$monai_ms.bundle.evaluation_provenance(...)"``)
and passed to the report handler, which writes it into ``metrics.json`` and the sidecar of the
predictions table; ``inference.json`` passes the same record of the inferred split to the table handler,
which writes ``eval/inference/predictions.provenance.json`` beside ``predictions.csv``. ``monai-ms bundle export``
compares the recorded checkpoint SHA-256 with the model it exports and refuses metrics of another model.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_ms.io import sha256_file

__all__ = ["run_overrides", "evaluation_provenance"]


def run_overrides() -> dict[str, Any] | None:
    """The command-line overrides of the running ``python -m monai.bundle run`` (``--key value`` pairs).

    Read from the call stack (``monai.bundle.scripts.run`` keeps them in its ``override`` argument).

    Returns:
        key -> value as given (``#`` ids kept), or None when not run through ``monai.bundle run``
        (e.g. a ``ConfigParser`` in Python), where the overrides are not knowable.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "run" and frame.f_globals.get("__name__") == "monai.bundle.scripts":
            override = frame.f_locals.get("override")
            if isinstance(override, Mapping):
                return {str(k): _jsonable(v) for k, v in override.items()}
        frame = frame.f_back
    return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _bundle_metadata(bundle_root: str | os.PathLike | None) -> dict[str, Any]:
    from monai_ms.bundle.config import running_workflow

    workflow = running_workflow()
    if workflow is not None:
        meta = workflow.parser.get("_meta_")
        if isinstance(meta, Mapping) and meta.get("version"):
            return dict(meta)
    if bundle_root is not None:
        path = Path(bundle_root) / "configs" / "metadata.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def evaluation_provenance(
    split: str,
    data_manifest: str | os.PathLike,
    checkpoint: str | os.PathLike,
    bundle_root: str | os.PathLike | None = None,
    fold: int | None = None,
) -> dict[str, Any]:
    """The provenance record of one evaluation (or inference) run.

    Args:
        split: the evaluated split (``eval_split``; ``infer_split`` for inference).
        data_manifest: the manifest.
        checkpoint: the evaluated checkpoint (``models/model.pt``).
        bundle_root: the bundle folder (its ``configs/metadata.json`` gives the version when the running
            workflow's ``_meta_`` does not).
        fold: the manifest fold, if any.

    Returns:
        ``{"split", "fold", "manifest", "manifest_sha256", "checkpoint", "checkpoint_sha256", "bundle",
        "bundle_version", "overrides", "overrides_note", "monai_ms_version", "monai_version", "created_utc"}``.

    Raises:
        FileNotFoundError: the manifest or the checkpoint does not exist (names it).

    Examples:
        In ``evaluate.json``: ``"provenance": "$monai_ms.bundle.evaluation_provenance(@eval_split,
        @data_manifest, @ckpt_dir + '/model.pt', @bundle_root, @fold)"``.
    """
    import monai

    from monai_ms import __version__

    manifest, model = Path(data_manifest), Path(checkpoint)
    for label, path in (("manifest", manifest), ("checkpoint", model)):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the evaluated {label} does not exist")
    meta = _bundle_metadata(bundle_root)
    overrides = run_overrides()
    return {
        "split": str(split),
        "fold": fold,
        "manifest": str(manifest.resolve()),
        "manifest_sha256": sha256_file(manifest),
        "checkpoint": str(model.resolve()),
        "checkpoint_sha256": sha256_file(model),
        "bundle": Path(bundle_root).name if bundle_root is not None else meta.get("name"),
        "bundle_version": meta.get("version"),
        "overrides": overrides,
        "overrides_note": "command-line overrides of `python -m monai.bundle run`"
        if overrides is not None
        else "unknown: not run through `python -m monai.bundle run`",
        "monai_ms_version": __version__,
        "monai_version": monai.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
