"""Export a trained bundle as one zip a collaborator can verify and run on their own scans.

The zip holds one folder, ``<name>/`` (the bundle folder's name by default)::

    <name>/LICENSE
    <name>/configs/        every config of the bundle; train.json with the settings the model was trained with
    <name>/configs/metadata.json   version, changelog entry, eval_metrics, eval_provenance (split, manifest
                                   and checkpoint SHA-256, bundle version, overrides of the evaluation),
                                   the export's library versions
    <name>/docs/README.md  the bundle's README with a generated "Trained model" section
    <name>/models/model.pt           the best checkpoint's state_dict (loads with weights_only=True)
    <name>/models/model.ts           TorchScript (monai.bundle.ckpt_export), runs without monai_ms
    <name>/models/normalization.json the demographic / target statistics stored in the model's buffers
    <name>/models/SHA256SUMS         sha256sum of every other file in models/ (``sha256sum -c`` works)

Other files of the training ``models/`` folder that inference reads (``*.json``, e.g. brain age's
``age_bias.json``) are copied too; ``last.pt`` (training state) and ``model.provenance.json`` (the
training subjects' ids) are not.

The staged bundle is checked with :func:`~monai_ms.bundle.verify.verify_bundle` before the zip is
written (atomically), so a zip that exists has passed verification once.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ms.bundle.verify import CHECKSUM_FILE, verify_bundle
from monai_ms.data.fields import SEX_CONFIG_CODES, SPLITS
from monai_ms.data.transforms import Step
from monai_ms.errors import UserError
from monai_ms.io import atomic_path, sha256_file, write_json, write_text

__all__ = [
    "ExportError",
    "ExportResult",
    "NORMALIZATION_FILE",
    "check_metrics_checkpoint",
    "cohort_counts",
    "eval_metrics_from",
    "eval_provenance_from",
    "export_bundle",
    "monai_only_inference_config",
    "next_version",
    "normalization_from_state",
    "trained_model_section",
    "write_checksums",
]

logger = logging.getLogger(__name__)

NORMALIZATION_FILE = "normalization.json"
NORMALIZATION_BUFFERS = ("demographics_mean", "demographics_std", "target_mean", "target_std")
SECTION_TITLE = "## Trained model"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(.*)$")


class ExportError(UserError, ValueError):
    """The bundle cannot be exported as asked; the message says what is missing and how to make it."""


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: the zip.
        name: the bundle folder inside the zip.
        version: the exported ``metadata.json`` version.
        sha256: SHA-256 of the zip (give it to the recipient by another channel).
        files: the zip's entries.
        checks: what the pre-export verification checked.
    """

    path: Path
    name: str
    version: str
    sha256: str
    files: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def next_version(version: str, changelog: Mapping[str, Any] | None = None) -> str:
    """The next patch version after ``version`` and every version in ``changelog``.

    Args:
        version: ``MAJOR.MINOR.PATCH`` (a suffix such as ``rc1`` is dropped).
        changelog: the metadata changelog; its keys are never reused.

    Raises:
        ExportError: ``version`` is not ``MAJOR.MINOR.PATCH``.

    Examples:
        >>> next_version("0.1.0", {"0.1.0": "first", "0.1.1": "second"})
        '0.1.2'
    """
    parsed = []
    for candidate in [version, *(changelog or {})]:
        match = _VERSION.match(str(candidate))
        if match:
            parsed.append(tuple(int(g) for g in match.groups()[:3]))
        elif candidate == version:
            raise ExportError(f"metadata.json version must be MAJOR.MINOR.PATCH, got {version!r}; pass --version")
    major, minor, patch = max(parsed)
    return f"{major}.{minor}.{patch + 1}"


def eval_metrics_from(report: Mapping[str, Any]) -> dict[str, float]:
    """The model's scalar metrics from an evaluation ``metrics.json`` (for ``metadata.json`` ``eval_metrics``).

    Regression and classification reports keep them under ``"model"``, the lesion report under
    ``"summary"``; lists (confusion matrices), strings and baselines are left out.

    Examples:
        >>> eval_metrics_from({"model": {"n": 9, "mae": 1.2, "confusion": [[1, 0], [0, 1]]}, "baselines": {}})
        {'n': 9, 'mae': 1.2}
    """
    source = report.get("model") or report.get("summary") or report
    return {k: v for k, v in source.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_provenance_from(report: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of an evaluation ``metrics.json`` as an exported bundle records it (``eval_provenance``).

    The record of :func:`monai_ms.bundle.evaluation_provenance` (split, fold, manifest and checkpoint SHA-256,
    bundle name and version, the run's overrides, library versions, time), with the trainer's local paths of
    the manifest and the checkpoint reduced to their file names (the SHA-256 identify them; the folders mean
    nothing on a collaborator's machine). Empty when the report records no provenance.

    Examples:
        >>> eval_provenance_from({"provenance": {"split": "testing", "manifest": "/data/c/manifest.json",
        ...                                      "manifest_sha256": "ab", "checkpoint_sha256": "cd"}})
        {'split': 'testing', 'manifest': 'manifest.json', 'manifest_sha256': 'ab', 'checkpoint_sha256': 'cd'}
    """
    provenance = report.get("provenance")
    if not isinstance(provenance, Mapping):
        return {}
    record = json.loads(json.dumps(provenance))  # a deep, JSON-clean copy
    for key in ("manifest", "checkpoint"):
        if isinstance(record.get(key), str):
            record[key] = Path(record[key]).name
    return record


def check_metrics_checkpoint(
    report: Mapping[str, Any], checkpoint: str | os.PathLike, metrics_file: str | os.PathLike, command: str = ""
) -> str:
    """Refuse an evaluation report that was not made with ``checkpoint`` (compares the recorded SHA-256).

    Args:
        report: the evaluation ``metrics.json``.
        checkpoint: the model being exported.
        metrics_file: the report's path (for the message).
        command: the evaluation command to suggest.

    Returns:
        the split the metrics came from.

    Raises:
        ExportError: the report records no checkpoint SHA-256 (written before monai_ms 0.3.0 bundles) or
            another checkpoint's; the message names the split the metrics came from.

    Examples:
        >>> metrics = {"split": "testing", "provenance": {"checkpoint_sha256": "ab"}}
        >>> check_metrics_checkpoint(metrics, "m.pt", "metrics.json")  # doctest: +SKIP
        'testing'
    """
    provenance = report.get("provenance") if isinstance(report.get("provenance"), Mapping) else {}
    split = str(report.get("split") or provenance.get("split") or "unknown")
    recorded = provenance.get("checkpoint_sha256")
    again = f"; evaluate this model again: {command}" if command else "; evaluate this model again"
    if not recorded:
        raise ExportError(
            f"{metrics_file}: records no checkpoint SHA-256 (split {split}), so it cannot be tied to {checkpoint}{again}"
        )
    actual = sha256_file(checkpoint)
    if recorded != actual:
        raise ExportError(
            f"{metrics_file}: metrics of the {split} split were computed with checkpoint SHA-256 {recorded[:12]}..., "
            f"but {checkpoint} is {actual[:12]}... (changed since evaluation: stale metrics){again}"
        )
    return split


def _evaluated_count(report: Mapping[str, Any]) -> int | None:
    metrics = eval_metrics_from(report)
    for key in ("n", "n_scans"):
        if isinstance(metrics.get(key), int):
            return int(metrics[key])
    return None


def normalization_from_state(state: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The normalisation buffers of a state_dict as readable JSON (they stay in the model too).

    Args:
        state: the network's ``state_dict``.
        metadata: the bundle metadata (names the demographic columns).

    Returns:
        ``{"demographics_mean": [...], ..., "demographics_columns": [...], "note": ...}``; only the
        buffers the network has.

    Examples:
        >>> import torch
        >>> normalization_from_state({"target_mean": torch.tensor([3.0]), "w": torch.ones(2)}, {})["target_mean"]
        [3.0]
    """
    values: dict[str, Any] = {}
    for key, tensor in state.items():
        name = key.rsplit(".", 1)[-1]
        if name in NORMALIZATION_BUFFERS:
            values[name] = [float(v) for v in tensor.flatten().tolist()]
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    demographics = inputs.get("demographics", {}).get("channel_def")
    result: dict[str, Any] = dict(values)
    if demographics and "demographics_mean" in values:
        result["demographics_columns"] = [demographics[k] for k in sorted(demographics, key=int)]
    result["note"] = (
        "Fitted on the training split (monai_ms.engines.fit_normalization) and stored as buffers of the network: "
        "models/model.pt and models/model.ts apply them inside forward(); give the network raw age in years and "
        "sex as 1 = male / 0 = female. Predictions are target_mean + target_std * head output. "
        "This file is for reading only; changing it changes nothing."
    )
    return result


def cohort_counts(manifest: str | os.PathLike, fold: int | None = None) -> dict[str, dict[str, int]]:
    """Sessions and patients per split of a manifest.

    Returns:
        ``{"training": {"sessions": 30, "subjects": 20}, "validation": {...}, "testing": {...}}``.

    Examples:
        >>> cohort_counts("cohort.json")["testing"]  # doctest: +SKIP
        {'sessions': 9, 'subjects': 6}
    """
    from monai_ms.data.manifest import load_datalist

    counts = {}
    for split in SPLITS:
        entries = load_datalist(manifest, split, fold=fold, validate=False)
        subjects = {str(e.get("subject", e.get("session"))) for e in entries}
        counts[split] = {"sessions": len(entries), "subjects": len(subjects)}
    return counts


def write_checksums(models_dir: str | os.PathLike) -> Path:
    """Write ``models_dir/SHA256SUMS`` for every other file in the folder (``sha256sum`` format).

    Examples:
        >>> write_checksums("edss/models")  # doctest: +SKIP
        PosixPath('edss/models/SHA256SUMS')
    """
    models_dir = Path(models_dir)
    files = sorted(p for p in models_dir.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
    lines = [f"{sha256_file(p)}  {p.name}" for p in files]
    return write_text("\n".join(lines) + "\n", models_dir / CHECKSUM_FILE)


def _format_number(value: Any) -> str:
    if value is None:
        return "n/a"  # an undefined metric (e.g. Pearson r of a constant prediction)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _metrics_table(report: Mapping[str, Any]) -> list[str]:
    model = eval_metrics_from(report)
    if not model:
        return []
    columns = [k for k in model if k not in ("n", "n_scans")]
    rows = [("model", model)]
    for name, values in (report.get("baselines") or {}).items():
        if isinstance(values, Mapping):
            rows.append((f"baseline: {name}", values))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(_with_interval(values, c) for c in columns) + " |")
    uncertainty = report.get("uncertainty")
    if isinstance(uncertainty, Mapping):
        lines += ["", f"Brackets: 95% interval, {uncertainty.get('method', 'bootstrap')}; {uncertainty.get('n_subjects')} "
                  f"subjects, {uncertainty.get('n_sessions')} sessions, {uncertainty.get('n_resamples')} resamples."]
    return lines


def _with_interval(values: Mapping[str, Any], column: str) -> str:
    text = _format_number(values.get(column, ""))
    interval = (values.get("ci95") or {}).get(column) if isinstance(values.get("ci95"), Mapping) else None
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        text += f" [{_format_number(interval[0])}, {_format_number(interval[1])}]"
    return text


def trained_model_section(
    name: str,
    archive: str,
    version: str,
    settings: Mapping[str, Any],
    overrides: Mapping[str, Any],
    counts: Mapping[str, Mapping[str, int]] | None,
    manifest_label: str | None,
    report: Mapping[str, Any] | None,
    files: Mapping[str, str],
    parameters: int,
    network: str,
    monai_only: bool,
) -> str:
    """The generated ``## Trained model`` section of the exported ``docs/README.md`` (Markdown).

    Args:
        name: the bundle folder name in the zip.
        archive: the zip's file name (for the commands shown).
        version: the exported version.
        settings: ``spacing``, ``roi_size``, ``patch_size`` of the exported ``train.json``.
        overrides: the settings changed from the bundle's defaults.
        counts: sessions and patients per split (:func:`cohort_counts`), or None.
        manifest_label: the manifest's file name, or None.
        report: the evaluation ``metrics.json``, or None.
        files: ``models/`` file name -> SHA-256.
        parameters: number of network parameters.
        network: the network class (``network_def`` target).
        monai_only: also show the MONAI-only command.

    Returns:
        the section, ending with a newline.
    """
    import monai
    import torch

    from monai_ms import __version__

    today = datetime.date.today().isoformat()
    lines = [
        SECTION_TITLE,
        "",
        f"_Generated by `monai-ms bundle export` on {today} (monai_ms {__version__}, MONAI {monai.__version__}, "
        f"PyTorch {torch.__version__.split('+')[0]}). Version {version}._",
        "",
        "**Only run bundles from people you trust.** Bundle configs are Python expressions that MONAI executes; "
        "a bundle can run any code on your machine. Check `models/SHA256SUMS` and the zip's SHA-256 (ask the "
        "sender for it) before running.",
        "",
        "### What it was trained on",
        "",
    ]
    if counts:
        source = f" (`{manifest_label}`)" if manifest_label else ""
        lines.append(f"Cohort{source}, sessions (patients) per split:")
        lines.append("")
        lines.append("| split | sessions | patients |")
        lines.append("|---|---|---|")
        for split, count in counts.items():
            lines.append(f"| {split} | {count['sessions']} | {count['subjects']} |")
    else:
        lines.append("Cohort: not given at export (`monai-ms bundle export --data-manifest`).")
    lines.append("")
    spacing = settings.get("spacing")
    if spacing is not None:
        lines.append(f"- Voxel spacing: {' x '.join(f'{float(s):g}' for s in spacing)} mm (RAS).")
    if settings.get("roi_size") is not None:
        lines.append(f"- Network input (whole-brain ROI): {' x '.join(str(s) for s in settings['roi_size'])} voxels.")
    if settings.get("patch_size") is not None:
        lines.append(f"- Patch / sliding-window ROI: {' x '.join(str(s) for s in settings['patch_size'])} voxels.")
    if settings.get("modalities"):
        names = ", ".join(f"`{m}` ({CHANNEL_NAMES.get(m, m)})" for m in settings["modalities"])
        lines.append(f"- Input images (`modalities`, every session needs each): {names}.")
    lines.append(f"- Network: `{network}`, {parameters:,} parameters.")
    if overrides:
        baked = ", ".join(f"`{k}` = `{json.dumps(v)}`" for k, v in overrides.items())
        lines.append(f"- Settings changed from the bundle defaults (written into `configs/train.json`): {baked}.")
    lines.append("")
    if report:
        split = report.get("split", "testing")
        count = _evaluated_count(report)
        lines += [f"### Evaluation ({split} split{f', n = {count}' if count is not None else ''})", ""]
        lines += _metrics_table(report) or ["(no scalar metrics)"]
        lines += ["", "The same numbers are in `configs/metadata.json` -> `eval_metrics`.", ""]
        provenance = eval_provenance_from(report)
        if provenance:
            overrides = provenance.get("overrides")
            if overrides is None:
                shown = "unknown (not run through `python -m monai.bundle run`)"
            else:
                shown = ", ".join(f"`{k}` = `{json.dumps(v)}`" for k, v in overrides.items()) or "none"
            lines += [
                f"Provenance of these figures (`configs/metadata.json` -> `eval_provenance`): split "
                f"`{provenance.get('split')}`, manifest SHA-256 `{provenance.get('manifest_sha256')}`, evaluated "
                f"checkpoint SHA-256 `{provenance.get('checkpoint_sha256')}` (the trainer's `models/model.pt`; "
                f"`monai-ms bundle export` checked that it is the exported model), bundle "
                f"`{provenance.get('bundle')}` version `{provenance.get('bundle_version')}`, overrides of the "
                f"evaluation run: {shown}.",
                "",
            ]
    else:
        lines += ["### Evaluation", "", "Not evaluated (exported with `--no-metrics`).", ""]
    lines += ["### Files", "", "| file | SHA-256 |", "|---|---|"]
    lines += [f"| `models/{f}` | `{digest}` |" for f, digest in files.items()]
    lines += [
        "",
        f"`models/{NORMALIZATION_FILE}` lists the demographic and target normalisation statistics of the training "
        "split. They are buffers of the network, so `model.pt` and `model.ts` already apply them; the file is for "
        f"reading. `models/{CHECKSUM_FILE}` is in `sha256sum` format: `cd models && sha256sum -c {CHECKSUM_FILE}`.",
        "",
        "### Run it on your scans",
        "",
        "```bash",
        f"pip install -e <monai_ms {__version__} checkout>   # monai_ms, MONAI and PyTorch",
        f"monai-ms bundle verify {archive} --extract-to .      # checks, then unpacks into ./{name}",
        "monai-ms manifest build --csv my_scans.csv --image-root my_images --new-scans --out new_scans.json",
        f"python -m monai.bundle run inferring --config_file "
        f"\"['{name}/configs/train.json','{name}/configs/inference.json']\" --data_manifest new_scans.json",
        "```",
        "",
        f"Outputs go to `{name}/eval/inference/` (`--output_dir` changes it). The run refuses to start when a model "
        f"file does not match `models/{CHECKSUM_FILE}`.",
    ]
    if monai_only:
        lines += [
            "",
            "With MONAI only (no monai_ms; TorchScript model, no input checks beyond MONAI's):",
            "",
            "```bash",
            f"python -m monai.bundle run inferring --config_file {name}/configs/inference_monai.json "
            f"--bundle_root {name} --data_manifest new_scans.json",
            "```",
        ]
    return "\n".join(lines) + "\n"


def _replace_section(readme: str, section: str) -> str:
    """Put ``section`` in place of an existing ``## Trained model`` section, else before the first ``## ``."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION_TITLE), None)
    if start is None:
        # first thing after the introduction: what a recipient wants to know
        start = end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = "\n".join(lines[:start]).rstrip("\n")
    rest = "\n".join(lines[end:]).strip("\n")
    return (head + "\n\n" if head else "") + section + ("\n" + rest + "\n" if rest else "")


def _run_command(bundle: Path, run_id: str, second: str | None = None) -> str:
    """The documented ``python -m monai.bundle run`` line that produces a missing file."""
    train = bundle / "configs" / "train.json"
    if second is None:
        return f"python -m monai.bundle run {run_id} --config_file {train}"
    return f"python -m monai.bundle run {run_id} --config_file \"['{train}','{bundle / 'configs' / second}']\""


def _set_config_value(config: dict, key: str, value: Any, source: Path) -> None:
    """Set a ``#``-separated config id that must already exist (a mistyped key is refused)."""
    parts = key.split("#")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, dict) and part in node:
            if last:
                node[part] = value
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
            node = node[int(part)]
        else:
            raise ExportError(f"--set {key}: {source} has no such config id (at {part!r})")


def _parse_settings(train_json: Path, bundle: Path) -> tuple[dict[str, Any], Any]:
    """The literal training settings the README reports, and the parser (bundle_root set)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(train_json))
    parser["bundle_root"] = str(bundle)
    settings = {}
    for key in ("spacing", "roi_size", "patch_size", "fold", "modalities"):
        if key in parser:
            settings[key] = parser.get_parsed_content(key)
    return settings, parser


# how the exported metadata names each modality's channel (BIDS suffixes)
CHANNEL_NAMES = {"t1": "T1w", "t2": "T2w", "flair": "FLAIR", "pd": "PDw", "t1ce": "T1w (contrast-enhanced, ce-)"}


def inputs_for_modalities(inputs: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """The metadata's ``network_data_format.inputs`` of a network trained on ``modalities``.

    A stacked ``image`` input gets one channel per modality; the EDSS network's second stream (declared
    ``t2``) becomes its batch key (:func:`monai_ms.networks.stream_keys`) with the other modalities as
    channels; ``t1`` and tabular inputs stay.

    Examples:
        >>> inputs_for_modalities({"image": {"num_channels": 2}}, ["t1", "flair"])["image"]["channel_def"]
        {'0': 'T1w', '1': 'FLAIR'}
    """
    out: dict[str, Any] = {}
    for name, entry in inputs.items():
        entry = dict(entry)
        if name == "image":
            entry["num_channels"] = len(modalities)
            entry["channel_def"] = {str(i): CHANNEL_NAMES[m] for i, m in enumerate(modalities)}
        elif name == "t2" and len(modalities) >= 2:
            from monai_ms.networks.dual_stream import stream_keys

            others = list(modalities[1:])
            name = stream_keys(modalities)[1]  # the EDSS second stream's batch key
            entry["num_channels"] = len(others)
            entry["channel_def"] = {str(i): CHANNEL_NAMES[m] for i, m in enumerate(others)}
        out[name] = entry
    return out


def _default_manifest(parser: Any) -> Path | None:
    """The manifest the bundle trains on by default, if it exists already (never generates the demo cohort)."""
    raw = parser.get("data_manifest")
    if isinstance(raw, str) and "demo_manifest" in raw:
        from monai_ms.bundle.cohort import demo_manifest_path

        demo = demo_manifest_path(parser.get_parsed_content("dataset_dir"))
        return demo if demo.is_file() else None
    if isinstance(raw, str) and not raw.startswith("$") and Path(raw).is_file():
        return Path(raw)
    return None


def export_bundle(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike,
    version: str | None = None,
    changelog: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_manifest: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    eval_dir: str | os.PathLike | None = None,
    require_metrics: bool = True,
    overwrite: bool = False,
    name: str | None = None,
    monai_only: bool = True,
    onnx: bool = False,
) -> ExportResult:
    """Write a trained bundle as a verified, self-contained zip (see the module docstring for its layout).

    Args:
        bundle_dir: the trained bundle folder, e.g. ``bundles/edss``.
        out: the zip to write.
        version: the exported version (``MAJOR.MINOR.PATCH``); default: the next patch version after the
            bundle's ``metadata.json`` version and every changelog entry.
        changelog: the changelog text of this version; default: a summary of the export.
        overrides: settings the model was trained with that differ from ``configs/train.json`` (the
            command-line overrides of the training run, e.g. ``{"spacing": [4, 4, 4]}``; ``#`` ids such
            as ``network_def#channels`` work). Written into the exported ``train.json``, so inference
            preprocesses new scans as in training. Every key must exist in ``train.json``.
        data_manifest: the manifest the model was trained on (cohort sizes in the README); default: the
            bundle's default manifest if it exists (the demo cohort), else none.
        ckpt_dir: where training wrote ``model.pt`` (default ``<bundle>/models``).
        eval_dir: where evaluation wrote ``metrics.json`` (default ``<bundle>/eval``).
        require_metrics: refuse to export without ``metrics.json``; False leaves ``eval_metrics`` empty.
        overwrite: replace an existing ``out``.
        name: the bundle folder name inside the zip (default: the bundle folder's name).
        monai_only: add ``configs/inference_monai.json`` (TorchScript inference with MONAI only) for
            bundles whose inference it supports (whole-volume scalar prediction).
        onnx: also write ``models/model.onnx``, checked against the checkpoint with ONNX Runtime
            (:func:`monai_ms.bundle.onnx_export.export_onnx`; needs ``monai-ms[onnx]``).

    Returns:
        an :class:`ExportResult` with the zip's path, version and SHA-256.

    Raises:
        ExportError: no ``models/model.pt`` (train first), no ``eval/metrics.json`` (evaluate first), an
            unknown override key, an invalid version, a manifest that does not match the evaluation, or a
            staged bundle that fails verification (one line per problem).
        FileExistsError: ``out`` exists and ``overwrite`` is False.

    Examples:
        >>> result = export_bundle("bundles/edss", "edss_bundle.zip")  # doctest: +SKIP
        >>> result.version, result.sha256[:12]  # doctest: +SKIP
        ('0.1.1', '5d41402abc4b')
    """
    import torch

    bundle = Path(bundle_dir).resolve()
    out = Path(out)
    name = name or bundle.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise ExportError(f"bundle name must be letters, digits, '_', '-' or '.', got {name!r}")
    configs = bundle / "configs"
    for required in ("train.json", "inference.json", "metadata.json"):
        if not (configs / required).is_file():
            raise ExportError(f"{configs / required}: missing; {bundle} is not a monai_ms bundle folder")
    if not (bundle / "LICENSE").is_file():
        raise ExportError(f"{bundle / 'LICENSE'}: missing; a shared bundle must say under which licence it is shared")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    models = Path(ckpt_dir) if ckpt_dir is not None else bundle / "models"
    checkpoint = models / "model.pt"
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: no trained model; train first: {_run_command(bundle, 'training')}")
    metrics_file = (Path(eval_dir) if eval_dir is not None else bundle / "eval") / "metrics.json"
    report: dict[str, Any] | None = None
    if metrics_file.is_file():
        report = json.loads(metrics_file.read_text())
    elif require_metrics:
        raise ExportError(
            f"{metrics_file}: no evaluation of the trained model; evaluate first: "
            f"{_run_command(bundle, 'evaluating', 'evaluate.json')} (or export with --no-metrics)"
        )
    if report is not None:
        check_metrics_checkpoint(report, checkpoint, metrics_file, _run_command(bundle, "evaluating", "evaluate.json"))
        logger.info(f"exporting the metrics of the {report.get('split')} split ({metrics_file})")

    source_meta = json.loads((configs / "metadata.json").read_text())
    version = version or next_version(str(source_meta.get("version", "0.0.0")), source_meta.get("changelog"))
    if not _VERSION.match(version):
        raise ExportError(f"--version must be MAJOR.MINOR.PATCH, got {version!r}")
    if version in (source_meta.get("changelog") or {}):
        raise ExportError(
            f"version {version} is already in the changelog of {configs / 'metadata.json'}; pass a new --version"
        )

    with tempfile.TemporaryDirectory(prefix="monai_ms_export_") as tmp:
        stage = Path(tmp) / name
        shutil.copytree(configs, stage / "configs", ignore=shutil.ignore_patterns(".*", "__pycache__"))
        if (bundle / "docs").is_dir():
            shutil.copytree(bundle / "docs", stage / "docs", ignore=shutil.ignore_patterns(".*", "__pycache__"))
        shutil.copy2(bundle / "LICENSE", stage / "LICENSE")

        train_json = stage / "configs" / "train.json"
        overrides = dict(overrides or {})
        if overrides:
            config = json.loads(train_json.read_text())
            for key, value in overrides.items():
                _set_config_value(config, key, value, configs / "train.json")
            write_text(json.dumps(config, indent=4) + "\n", train_json)
        settings, parser = _parse_settings(train_json, bundle)

        manifest = Path(data_manifest) if data_manifest is not None else _default_manifest(parser)
        counts = cohort_counts(manifest, fold=settings.get("fold")) if manifest is not None else None
        if manifest is None:
            logger.warning("no --data-manifest and no default manifest found: the README will not give cohort sizes")
        evaluated = _evaluated_count(report) if report else None
        split = str(report.get("split", "testing")) if report else "testing"
        if counts and evaluated is not None and split in counts and counts[split]["sessions"] != evaluated:
            raise ExportError(
                f"{metrics_file} evaluated {evaluated} sessions but the {split} split of {manifest} has "
                f"{counts[split]['sessions']}: pass the manifest the model was trained and evaluated on "
                "with --data-manifest"
            )

        # the checkpoint's weights only: a {"model": ...} dict is unwrapped, optimizer state dropped
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
            state = state["model"]
        staged_models = stage / "models"
        staged_models.mkdir()
        with atomic_path(staged_models / "model.pt") as target:
            torch.save(dict(state), target)
        for side_file in sorted(models.glob("*.json")):
            # the provenance record lists the training subjects' ids: it stays with the trainer, not in a shared zip
            if side_file.name != NORMALIZATION_FILE and not side_file.name.endswith(".provenance.json"):
                shutil.copy2(side_file, staged_models / side_file.name)

        metadata = _exported_metadata(source_meta, version, changelog, report, settings, overrides, counts)
        write_json(metadata, stage / "configs" / "metadata.json", indent=4)
        normalization = normalization_from_state(state, metadata)
        if len(normalization) > 1:
            write_json(normalization, staged_models / NORMALIZATION_FILE)

        from monai.bundle import ckpt_export

        ckpt_export(
            net_id="network_def",
            filepath=str(staged_models / "model.ts"),
            ckpt_file=str(staged_models / "model.pt"),
            meta_file=str(stage / "configs" / "metadata.json"),
            config_file=[str(train_json), str(stage / "configs" / "inference.json")],
            bundle_root=str(stage),
        )
        wrote_monai_only = monai_only and _write_monai_only_config(stage, metadata)
        if onnx:
            from monai_ms.bundle.onnx_export import OnnxExportError, export_onnx

            try:
                logger.info(export_onnx(stage).describe().replace(str(stage), name))
            except OnnxExportError as error:
                raise ExportError(str(error).replace(str(stage), name)) from error

        write_checksums(staged_models)
        sums = (staged_models / CHECKSUM_FILE).read_text().splitlines()
        digests = {line.split()[1]: line.split()[0] for line in sums}
        network = parser.get_parsed_content("network_def", instantiate=True)
        target_name = str(parser.get("network_def#_target_", type(network).__name__))
        section = trained_model_section(
            name=name,
            archive=out.name,
            version=version,
            settings=settings,
            overrides=overrides,
            counts=counts,
            manifest_label=manifest.name if manifest is not None else None,
            report=report,
            files=digests,
            parameters=sum(p.numel() for p in network.parameters()),
            network=target_name,
            monai_only=wrote_monai_only,
        )
        readme = stage / "docs" / "README.md"
        write_text(_replace_section(readme.read_text() if readme.is_file() else f"# {name}\n", section), readme)

        verification = verify_bundle(stage)
        checks = [line.replace(str(stage), name) for line in verification.checks]
        if not verification.ok:
            problems = [line.replace(str(stage), name) for line in verification.problems]
            raise ExportError("the exported bundle fails verification:\n" + "\n".join(problems))

        files = sorted(p for p in stage.rglob("*") if p.is_file())
        entries = [f"{name}/{p.relative_to(stage).as_posix()}" for p in files]
        with atomic_path(out, overwrite=overwrite) as target:
            with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path, entry in zip(files, entries):
                    archive.write(path, entry)
    result = ExportResult(path=out, name=name, version=version, sha256=sha256_file(out), files=entries, checks=checks)
    logger.info(f"exported {bundle} version {version} to {out} (sha256 {result.sha256})")
    return result


def _exported_metadata(
    source: Mapping[str, Any],
    version: str,
    changelog: str | None,
    report: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    overrides: Mapping[str, Any],
    counts: Mapping[str, Mapping[str, int]] | None,
) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    from monai_ms import __version__

    metadata = json.loads(json.dumps(source))  # a deep copy
    metrics = eval_metrics_from(report) if report else {}
    if changelog is None:
        parts = [f"trained model exported {datetime.date.today().isoformat()}"]
        if counts:
            parts.append(f"{counts['training']['sessions']} training sessions")
        if metrics:
            shown = [f"{k} {_format_number(v)}" for k, v in metrics.items() if k not in ("n", "n_scans")][:3]
            parts.append(f"{report.get('split', 'testing') if report else 'testing'}: " + ", ".join(shown))
        if overrides:
            parts.append("settings: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()))
        changelog = "; ".join(parts)
    metadata["version"] = version
    metadata["changelog"] = {version: changelog, **(source.get("changelog") or {})}
    metadata["eval_metrics"] = metrics
    provenance = eval_provenance_from(report) if report else {}
    if provenance:
        metadata["eval_provenance"] = provenance
    metadata["monai_version"] = monai.__version__
    metadata["pytorch_version"] = torch.__version__.split("+")[0]
    metadata["numpy_version"] = numpy.__version__
    metadata.setdefault("required_packages_version", {})["monai-ms"] = __version__
    modalities = settings.get("modalities")
    if modalities:
        # what inference needs per session: monai_ms checks a manifest against it before any work
        metadata["modalities"] = list(modalities)
        formats = metadata.get("network_data_format", {})
        if "inputs" in formats:
            formats["inputs"] = inputs_for_modalities(formats["inputs"], modalities)
    roi = settings.get("roi_size")
    for entry in metadata.get("network_data_format", {}).get("inputs", {}).values():
        spatial = entry.get("spatial_shape", [])
        # a whole-volume input is declared at the ROI the model was trained with
        if roi and spatial and len(spatial) == len(roi) and all(isinstance(s, int) for s in spatial):
            entry["spatial_shape"] = [int(s) for s in roi]
    return metadata


def _write_monai_only_config(stage: Path, metadata: Mapping[str, Any]) -> bool:
    """Write ``configs/inference_monai.json`` when the bundle's inference fits it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(stage / "configs" / "train.json"), str(stage / "configs" / "inference.json")])
    parser["bundle_root"] = str(stage)
    config = monai_only_inference_config(parser, metadata)
    if config is None:
        return False
    write_json(config, stage / "configs" / "inference_monai.json", indent=4)
    return True


def monai_only_inference_config(parser: Any, metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """A self-contained inference config that needs only MONAI: ``models/model.ts``, no ``monai_ms`` import.

    Its transforms are the bundle's own ``infer#preprocessing`` chain: the same arguments given to
    :func:`monai_ms.data.transforms.paired_steps`, each step written with MONAI transforms
    (:meth:`~monai_ms.data.transforms.Step.monai_config`; the round-trip test checks that its predictions
    equal the monai_ms inference). It checks ``models/SHA256SUMS`` before loading the model, and writes
    ``eval/inference_monai/predictions.csv`` (``session,<value>``). What it does not do: the manifest
    validation of ``monai_ms`` (a bad scan fails inside MONAI, with MONAI's error) and the
    ``model_version`` column.

    Supported: the EDSS bundle on T1 + T2 (inputs ``t1``, ``t2``, ``demographics``; the network's output is
    the prediction), without ``bias_correction``. Other bundles return None (their inference post-processing lives in monai_ms).

    Args:
        parser: a ``ConfigParser`` of the exported ``train.json`` and ``inference.json``, ``bundle_root`` set.
        metadata: the exported metadata.

    Returns:
        the config as a dict, or None when the bundle is not supported.
    """
    inputs = list(metadata.get("network_data_format", {}).get("inputs", {}))
    roi = parser.get_parsed_content("roi_size") if "roi_size" in parser else None
    if parser.get("task") != "edss" or inputs != ["t1", "t2", "demographics"] or not isinstance(roi, (list, tuple)):
        return None
    if "modalities" in parser and list(parser.get_parsed_content("modalities")) != ["t1", "t2"]:
        return None  # the MONAI-only config is written for the T1 + T2 network only
    if parser.get_parsed_content("bias_correction", default=False):
        return None  # N4 is SimpleITK's; MONAI has no bias-field correction to write it with
    from monai.transforms import CopyItemsd

    spacing = parser.get_parsed_content("spacing")
    # the description behind the bundle's own inference chain: its arguments, given to paired_steps (the
    # caller's parser is given back as it came)
    target = parser.get("infer#preprocessing#_target_")
    parser["infer#preprocessing#_target_"] = "monai_ms.data.transforms.paired_steps"
    try:
        steps = parser.get_parsed_content("infer#preprocessing")
    finally:
        parser["infer#preprocessing#_target_"] = target
    # MONAI's default batch preparation reads the first input from "image"
    steps.append(Step(CopyItemsd, dict(keys="t1", times=1, names="image")))
    transforms = [entry for step in steps for entry in step.monai_config()]
    return {
        "imports": ["$import os", "$import numpy", "$import torch", "$import monai", "$import monai.apps.utils"],
        "bundle_root": ".",
        "data_manifest": "new_scans.json",
        "infer_split": "testing",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "inference_dir": "$@output_dir + '/inference_monai'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "batch_size": 2,
        "num_workers": 0,
        "spacing": list(spacing),
        "roi_size": list(roi),
        "sex_codes": dict(SEX_CONFIG_CODES),
        "checksums": f"$dict(reversed(line.split()) for line in open(@ckpt_dir + '/{CHECKSUM_FILE}') if line.strip())",
        "changed_model_files": "$[name for name in sorted(set(@checksums) | {'model.ts'}) if name not in @checksums "
        "or not monai.apps.utils.check_hash(os.path.join(@ckpt_dir, name), @checksums[name], 'sha256')]",
        "network": "$torch.jit.load(@ckpt_dir + '/model.ts', map_location=@device)",
        "infer": {
            "datalist": "$monai.data.load_decathlon_datalist("
            "@data_manifest, is_segmentation=False, data_list_key=@infer_split)",
            "preprocessing": {"_target_": "Compose", "transforms": transforms},
            "dataset": {"_target_": "Dataset", "data": "@infer#datalist", "transform": "@infer#preprocessing"},
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@infer#dataset",
                "batch_size": "@batch_size",
                "shuffle": False,
                "num_workers": "@num_workers",
            },
            "prepare_batch": {"_target_": "PrepareBatchExtraInput", "extra_keys": ["t2", "demographics"]},
            "handlers": [
                {
                    "_target_": "ClassificationSaver",
                    "output_dir": "@inference_dir",
                    "filename": "predictions.csv",
                    "overwrite": False,
                    "batch_transform": "$lambda batch: {'filename_or_obj': batch['session']}",
                    "output_transform": "$lambda output: output['pred']",
                }
            ],
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@infer#dataloader",
                "network": "@network",
                "inferer": {"_target_": "SimpleInferer"},
                "prepare_batch": "@infer#prepare_batch",
                "val_handlers": "@infer#handlers",
                "decollate": False,
            },
        },
        "initialize": [
            "$numpy.testing.assert_equal(' '.join(@changed_model_files), '', err_msg='model files that do not match "
            f"models/{CHECKSUM_FILE} (refusing to run a changed model)')",
            # the saver appends its rows after this header
            "$os.makedirs(@inference_dir, exist_ok=True) or "
            "open(@inference_dir + '/predictions.csv', 'w').write('session,edss_pred\\n')",
        ],
        "inferring": ["$@infer#evaluator.run()"],
    }
