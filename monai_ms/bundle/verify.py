"""Check a shared bundle (a folder or an exported zip) before anyone runs it.

What :func:`verify_bundle` checks, each failure reported as one line naming the file:

- the zip is safe to unpack (:func:`safe_extract`: no absolute path, no ``..``, no symlink, no entry
  that would land outside the target folder) and holds one bundle;
- the bundle layout (``configs/metadata.json``, ``configs/train.json``, ``configs/inference.json``,
  ``models/model.pt``, ``models/model.ts``, ``docs/README.md``, ``LICENSE``);
- ``configs/metadata.json`` is valid against the MONAI metadata schema, offline (the schema copy in
  ``monai_ms/bundle/schemas``; nothing is downloaded);
- ``models/SHA256SUMS`` (``sha256sum`` format) lists every file of ``models/`` and every listed file
  has that SHA-256;
- ``network_def`` of ``configs/train.json`` loads ``models/model.pt`` with ``weights_only=True``;
- the network runs on all of its inputs (``network_data_format.inputs``) at the configured ROI and
  its output matches ``network_data_format.outputs.pred`` (channels, dtype), as
  ``monai.bundle.verify_net_in_out`` does for one input;
- ``models/model.ts`` (TorchScript) gives the checkpoint's output on the same random inputs;
- ``models/model.onnx``, when present, run with ONNX Runtime gives the checkpoint's output too
  (:func:`monai_ms.bundle.onnx_export.check_onnx`).

:func:`verify_checksums` is the part an inference run calls first (``inference.json`` ``initialize``):
a model file that does not match ``models/SHA256SUMS`` stops the run.

Checksums detect a corrupted or changed file, not a malicious sender: whoever can change a model
file can change ``SHA256SUMS`` too. Compare the zip's own SHA-256 with one the sender gives you by
another channel, and only run bundles from people you trust: bundle configs execute code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from monai_ms.errors import UserError, stop_or_raise
from monai_ms.io import read_text, sha256_file  # sha256_file: the project's one file digest; re-exported (it was defined here)

__all__ = [
    "CHECKSUM_FILE",
    "ChecksumError",
    "UnsafeArchiveError",
    "VerifyReport",
    "find_bundle_root",
    "read_checksums",
    "safe_extract",
    "sha256_file",
    "verify_bundle",
    "verify_checksums",
]

logger = logging.getLogger(__name__)

CHECKSUM_FILE = "SHA256SUMS"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "models/model.pt",
    "models/model.ts",
    "docs/README.md",
    "LICENSE",
)
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class ChecksumError(UserError, ValueError):
    """A model file that is missing from, or does not match, ``models/SHA256SUMS``."""


class UnsafeArchiveError(UserError, ValueError):
    """A zip entry that would be written outside the target folder, or is not a plain file or folder."""


def read_checksums(checksum_file: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum`` file: ``<64 hex digits><two spaces or ' *'><file name>`` per line.

    Names are relative to the checksum file's folder and must stay inside it.

    Args:
        checksum_file: e.g. ``models/SHA256SUMS``.

    Returns:
        file name -> lower-case hex digest.

    Raises:
        ChecksumError: the file is missing, a line is malformed, a name escapes the folder or is listed twice.

    Examples:
        >>> read_checksums("models/SHA256SUMS")  # doctest: +SKIP
        {'model.pt': '9f2c...', 'model.ts': '41ab...'}
    """
    path = Path(checksum_file)
    text = read_text(path, "checksum file", ChecksumError)
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SHA_LINE.match(line)
        if match is None:
            raise ChecksumError(f"{path} line {number}: expected '<64 hex digits>  <file name>', got {line[:80]!r}")
        digest, name = match.group(1).lower(), match.group(2)
        if _unsafe_relative(name):
            raise ChecksumError(f"{path} line {number}: file name must stay inside {path.parent}, got {name!r}")
        if name in sums:
            raise ChecksumError(f"{path} line {number}: {name} is listed twice")
        sums[name] = digest
    return sums


def _checksum_problems(
    models_dir: Path, required: Sequence[str] = (), every_file: bool = False
) -> tuple[list[str], set[str]]:
    """One line per problem of ``models_dir/SHA256SUMS``, and the names of listed files that are missing or changed."""
    checksum_file = models_dir / CHECKSUM_FILE
    present = {p.name for p in models_dir.iterdir() if p.is_file() and p.name != CHECKSUM_FILE}
    try:
        sums = read_checksums(checksum_file)
    except ChecksumError as error:
        # nothing is known to be changed, only unverifiable: the other checks still run
        return [str(error)], set()
    problems, failed = [], set()
    for name, expected in sums.items():
        path = models_dir / name
        if not path.is_file():
            problems.append(f"{path}: listed in {checksum_file} but missing")
            failed.add(name)
        elif sha256_file(path) != expected:
            problems.append(f"{path}: SHA-256 does not match {checksum_file} (the file was changed or corrupted)")
            failed.add(name)
    unlisted = (set(required) | (present if every_file else set())) - set(sums)
    for name in sorted(unlisted):
        problems.append(f"{models_dir / name}: not listed in {checksum_file}")
    return problems, failed


def verify_checksums(models_dir: str | os.PathLike, required: Sequence[str] = ("model.pt",)) -> bool:
    """Refuse to go on when a model file does not match ``models_dir/SHA256SUMS``.

    Called first in each bundle's ``inference.json`` ``initialize`` list with ``@ckpt_dir``. A bundle
    without a checksum file (one you trained yourself) passes; an exported bundle has one. Under
    ``python -m monai.bundle`` a mismatch prints one line per problem and exits with status 1 (no
    traceback); from Python it raises :class:`ChecksumError` with the same lines.

    Args:
        models_dir: the folder of the model files (the bundle's ``models/``).
        required: files that must be listed when a checksum file is present (what the run loads).

    Returns:
        True when there is no checksum file or every listed file matches.

    Raises:
        ChecksumError: a listed file is missing or changed, or a required file is not listed.

    Examples:
        In ``inference.json``: ``"initialize": ["$monai_ms.bundle.verify_checksums(@ckpt_dir)", ...]``.
    """
    models_dir = Path(models_dir)
    if not (models_dir / CHECKSUM_FILE).exists():
        return True
    problems, _ = _checksum_problems(models_dir, required=required)
    if not problems:
        logger.info(f"{models_dir / CHECKSUM_FILE}: every model file matches")
        return True
    hint = (
        f"refusing to run a changed model. Get the bundle again from its sender; if you retrained this "
        f"bundle yourself, delete {models_dir / CHECKSUM_FILE}."
    )
    stop_or_raise(ChecksumError("\n".join([*problems, hint])), "\n".join(problems) + f"\n\n{hint}")


def _unsafe_relative(name: str) -> bool:
    """True for a path that is absolute, has a drive or backslash, or climbs out with ``..``."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part == ".." for part in PurePosixPath(name).parts)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a zip into ``target`` after checking every entry; nothing is written if one is unsafe.

    Refused: absolute paths, drive letters, backslashes, ``..`` components, symbolic links and other
    non-regular entries, entries whose resolved path is outside ``target``, and duplicate names.

    Args:
        archive: the zip file.
        target: folder to unpack into (created if needed).

    Returns:
        ``target`` as a resolved path.

    Raises:
        UnsafeArchiveError: one line per refused entry, or a file that is not a zip.

    Examples:
        >>> safe_extract("edss_bundle.zip", "shared/edss_unpacked")  # doctest: +SKIP
        PosixPath('/home/me/shared/edss_unpacked')
    """
    archive = Path(archive)
    root = Path(target).resolve()
    try:
        bundle_zip = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsafeArchiveError(f"{archive}: not a readable zip file ({error})") from None
    with bundle_zip:
        problems, seen = [], set()
        for info in bundle_zip.infolist():
            name = info.filename
            mode = info.external_attr >> 16
            if _unsafe_relative(name):
                problems.append(f"{archive}: entry {name!r} would be written outside the target folder; refused")
                continue
            if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                problems.append(f"{archive}: entry {name!r} is a symbolic link or special file; refused")
                continue
            destination = (root / name).resolve()
            if destination != root and root not in destination.parents:
                problems.append(f"{archive}: entry {name!r} resolves outside {root}; refused")
                continue
            if name.rstrip("/") in seen:
                problems.append(f"{archive}: entry {name!r} appears twice; refused")
            seen.add(name.rstrip("/"))
        if problems:
            raise UnsafeArchiveError("\n".join(problems))
        root.mkdir(parents=True, exist_ok=True)
        bundle_zip.extractall(root)
    return root


def find_bundle_root(folder: str | os.PathLike) -> Path:
    """The bundle folder inside an unpacked zip: ``folder`` itself or its one sub-folder with ``configs/``.

    Raises:
        FileNotFoundError: no (or more than one) folder with ``configs/metadata.json``.
    """
    folder = Path(folder)
    if (folder / "configs" / "metadata.json").is_file():
        return folder
    candidates = [p for p in sorted(folder.iterdir()) if (p / "configs" / "metadata.json").is_file()]
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise FileNotFoundError(f"{folder}: expected one bundle folder with configs/metadata.json, found {found}")
    return candidates[0]


@dataclass
class VerifyReport:
    """Result of :func:`verify_bundle`: what was checked and one line per problem.

    Attributes:
        source: the folder or zip that was checked.
        bundle_dir: the bundle folder (inside a temporary folder for a zip, gone after the call).
        checks: one line per check that passed.
        problems: one line per failure, naming the file, the rule and the value.
    """

    source: str
    bundle_dir: str = ""
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Checks passed, then the problems, then a one-line verdict."""
        lines = [f"ok: {line}" for line in self.checks] + [f"FAILED: {line}" for line in self.problems]
        verdict = "bundle verified" if self.ok else f"{len(self.problems)} problem(s): do not run this bundle"
        return "\n".join([*lines, f"{self.source}: {verdict}"])


@contextmanager
def _bundle_folder(source: Path, extract_to: Path | None, report: VerifyReport) -> Iterator[Path | None]:
    """The bundle folder of ``source``: the folder itself, or a zip unpacked into a temporary folder."""
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        report.problems.append(f"{source}: no such file or folder")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="monai_ms_verify_") as tmp:
        try:
            unpacked = find_bundle_root(safe_extract(source, tmp))
        except (UnsafeArchiveError, FileNotFoundError) as error:
            report.problems.extend(str(error).splitlines())
            yield None
            return
        report.checks.append(f"{source}: every zip entry stays inside the bundle folder")
        yield unpacked
        if extract_to is not None and report.ok:
            destination = extract_to / unpacked.name
            if destination.exists():
                report.problems.append(f"{destination}: already exists; refusing to overwrite it")
            else:
                extract_to.mkdir(parents=True, exist_ok=True)
                shutil.move(str(unpacked), str(destination))
                report.bundle_dir = str(destination)
                report.checks.append(f"unpacked into {destination}")


def verify_bundle(
    source: str | os.PathLike,
    extract_to: str | os.PathLike | None = None,
    config: str = "train.json",
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
) -> VerifyReport:
    """Check a bundle folder or zip (see the module docstring for the list of checks).

    Every check runs and reports; a model file whose checksum fails is not loaded. Loading the
    network instantiates ``network_def`` from the bundle's configs, which runs the expressions in
    them: verify only bundles from sources you trust.

    Args:
        source: a bundle folder, or a zip made by :func:`~monai_ms.bundle.export.export_bundle`.
        extract_to: with a zip, move the unpacked bundle into this folder when every check passes.
        config: the config file (in ``configs/``) that defines ``network_def`` and ``roi_size``.
        rtol: relative tolerance of the TorchScript vs checkpoint comparison.
        atol: absolute tolerance of that comparison.
        seed: seed of the random test inputs.

    Returns:
        a :class:`VerifyReport`; ``report.ok`` is False when anything failed.

    Examples:
        >>> report = verify_bundle("edss_bundle.zip")  # doctest: +SKIP
        >>> print(report.format())  # doctest: +SKIP
    """
    source = Path(source)
    report = VerifyReport(source=str(source))
    with _bundle_folder(source, Path(extract_to) if extract_to is not None else None, report) as bundle:
        if bundle is None:
            return report
        report.bundle_dir = str(bundle)
        before = len(report.checks)
        _check_bundle(bundle, config, rtol, atol, seed, report)
        # name files as the user knows them, not by the temporary folder a zip was unpacked into
        label = str(source) if bundle == source else f"{source}:{bundle.name}"
        report.checks[before:] = [line.replace(str(bundle), label) for line in report.checks[before:]]
        report.problems[:] = [line.replace(str(bundle), label) for line in report.problems]
    return report


def _check_bundle(bundle: Path, config: str, rtol: float, atol: float, seed: int, report: VerifyReport) -> None:
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    report.problems.extend(f"{bundle / name}: missing (every shared bundle has it)" for name in missing)
    if not missing:
        report.checks.append(f"{bundle}: layout complete ({', '.join(REQUIRED_FILES)})")
    metadata = _check_metadata(bundle / "configs" / "metadata.json", report)

    models = bundle / "models"
    bad_files: set[str] = set()
    if models.is_dir():
        problems, bad_files = _checksum_problems(models, required=("model.pt", "model.ts"), every_file=True)
        report.problems.extend(problems)
        if not problems:
            report.checks.append(f"{models / CHECKSUM_FILE}: every model file listed and matching")
    if metadata is None or not (bundle / "configs" / config).is_file():
        return
    checkpoint = None if "model.pt" in bad_files else models / "model.pt"
    scripted = None if "model.ts" in bad_files else models / "model.ts"
    _check_network(bundle, config, metadata, checkpoint, scripted, rtol, atol, seed, report)
    if (models / "model.onnx").is_file() and checkpoint is not None and "model.onnx" not in bad_files:
        _check_onnx_model(bundle, config, models / "model.onnx", report)


def _check_onnx_model(bundle: Path, config: str, onnx_file: Path, report: VerifyReport) -> None:
    """``models/model.onnx`` run with ONNX Runtime gives the checkpoint's output (:mod:`monai_ms.bundle.onnx_export`)."""
    from monai_ms.bundle.onnx_export import OnnxExportError, check_onnx, onnx_available

    if not onnx_available():
        report.checks.append(f"{onnx_file}: listed in {CHECKSUM_FILE}; its output is NOT checked (pip install monai-ms[onnx])")
        return
    try:
        report.checks.append(check_onnx(bundle, onnx_file, config=config).describe())
    except OnnxExportError as error:
        report.problems.append(str(error))


def _check_metadata(path: Path, report: VerifyReport) -> dict | None:
    """Schema-validate ``metadata.json`` against the offline schema copy it names."""
    import jsonschema

    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        report.problems.append(f"{path}: not valid JSON ({error})")
        return None
    if not isinstance(metadata, dict):
        report.problems.append(f"{path}: must be a JSON object, got {type(metadata).__name__}")
        return None
    url = metadata.get("schema")
    schema_file = SCHEMA_DIR / Path(str(url)).name if isinstance(url, str) else None
    if schema_file is None or not schema_file.is_file():
        known = ", ".join(p.name for p in sorted(SCHEMA_DIR.glob("*.json")))
        report.problems.append(f"{path}: schema {url!r} has no offline copy in monai_ms (known: {known})")
        return metadata
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(metadata), key=lambda e: list(e.absolute_path))
    for error in errors:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        report.problems.append(f"{path}: {where}: {error.message} (schema {schema_file.name})")
    if not errors:
        report.checks.append(f"{path}: valid against {schema_file.name} (offline), version {metadata.get('version')}")
    return metadata


def _configured_roi(parser: Any) -> list[int] | None:
    """The ROI the bundle feeds its network: ``roi_size`` (whole volume) or ``patch_size`` (sliding window)."""
    for key in ("roi_size", "patch_size"):
        if key in parser:
            value = parser.get_parsed_content(key)
            if isinstance(value, (list, tuple)) and value:
                return [int(v) for v in value]
    return None


def _random_inputs(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, Any], seed: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = metadata["network_data_format"]["inputs"]
    tensors = {}
    for name, shape in shapes.items():
        tensor = torch.rand(shape, generator=generator)
        if inputs[name].get("type") == "tabular":
            tensor = tensor * 50.0 + 20.0  # age-like magnitudes; sex columns still vary
        tensors[name] = tensor
    return tensors


def _forward(network: Any, tensors: Mapping[str, Any], names: Sequence[str]) -> Any:
    # bundle input names (t1, t2, demographics) are forward's argument names for multi-input networks;
    # a one-input network takes "image" as its first argument, whatever it is called
    return network(**tensors) if set(tensors) <= set(names) else network(*tensors.values())


def _check_network(
    bundle: Path,
    config: str,
    metadata: Mapping[str, Any],
    checkpoint: Path | None,
    scripted: Path | None,
    rtol: float,
    atol: float,
    seed: int,
    report: VerifyReport,
) -> None:
    import inspect

    import torch
    from monai.bundle import ConfigParser

    from monai_ms.networks.summary import BundleError, bundle_input_shapes

    config_path = bundle / "configs" / config
    try:
        parser = ConfigParser()
        parser.read_config(str(config_path))
        parser["bundle_root"] = str(bundle)
        network = parser.get_parsed_content("network_def", instantiate=True)
        roi = _configured_roi(parser)
    except Exception as error:  # MONAI wraps the constructor's error: report the root cause
        cause: BaseException = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        report.problems.append(f"{config_path}: cannot build network_def: {cause}")
        return
    try:
        shapes = bundle_input_shapes(metadata, roi, source=str(bundle / "configs" / "metadata.json"))
    except BundleError as error:
        report.problems.append(str(error))
        return
    _check_declared_shapes(metadata, roi, bundle, report)
    network.eval()
    names = list(inspect.signature(network.forward).parameters)
    tensors = _random_inputs(shapes, metadata, seed)

    if checkpoint is not None and checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
                state = state["model"]
            network.load_state_dict(state, strict=True)
        except Exception as error:
            report.problems.append(
                f"{checkpoint}: cannot load into network_def of {config} with weights_only=True: {error}"
            )
            return
        report.checks.append(f"{checkpoint}: loads into {type(network).__name__} with weights_only=True")
    elif checkpoint is not None:
        return
    else:
        report.problems.append(f"{bundle / 'models' / 'model.pt'}: network checks skipped (it failed its checksum)")
        return

    described = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    try:
        with torch.no_grad():
            output = _forward(network, tensors, names)
    except Exception as error:
        report.problems.append(f"{config_path}: network_def fails on inputs {described}: {error}")
        return
    if _check_output(output, metadata, bundle, report):
        dtype = str(output.dtype).replace("torch.", "")
        report.checks.append(f"network runs on {described} -> {list(output.shape)} {dtype}")

    if scripted is None:
        report.problems.append(f"{bundle / 'models' / 'model.ts'}: TorchScript check skipped (it failed its checksum)")
        return
    if not scripted.is_file():
        return
    try:
        extra = {"metadata.json": ""}
        ts_network = torch.jit.load(str(scripted), map_location="cpu", _extra_files=extra)
        ts_network.eval()
        with torch.no_grad():
            ts_output = _forward(ts_network, tensors, names)
        torch.testing.assert_close(ts_output, output, rtol=rtol, atol=atol)
    except AssertionError as error:
        detail = " ".join(str(error).split())[:300]
        report.problems.append(f"{scripted}: TorchScript output differs from models/model.pt: {detail}")
        return
    except Exception as error:
        report.problems.append(f"{scripted}: cannot load or run the TorchScript model: {error}")
        return
    report.checks.append(f"{scripted}: same output as the checkpoint (rtol {rtol:g}, atol {atol:g})")
    ts_version = json.loads(extra["metadata.json"] or "{}").get("version")
    if ts_version is not None and ts_version != metadata.get("version"):
        report.problems.append(
            f"{scripted}: embedded metadata version {ts_version} differs from configs/metadata.json version "
            f"{metadata.get('version')} (a stale TorchScript export)"
        )


def _check_declared_shapes(
    metadata: Mapping[str, Any], roi: Sequence[int] | None, bundle: Path, report: VerifyReport
) -> None:
    """A fixed ``spatial_shape`` in the metadata must be the configured ROI; ``k*n`` must divide it."""
    if roi is None:
        return
    for name, entry in metadata["network_data_format"]["inputs"].items():
        spatial = entry.get("spatial_shape", [])
        if len(spatial) != len(roi):
            continue
        for axis, (declared, actual) in enumerate(zip(spatial, roi)):
            if isinstance(declared, int) and declared != actual:
                report.problems.append(
                    f"{bundle / 'configs' / 'metadata.json'}: network_data_format.inputs.{name}.spatial_shape is "
                    f"{list(spatial)} but the configured ROI is {list(roi)}"
                )
                break
            factor = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(declared)) if isinstance(declared, str) else None
            if factor and actual % int(factor.group(1)):
                report.problems.append(
                    f"{bundle / 'configs' / 'metadata.json'}: inputs.{name} axis {axis} must be a multiple of "
                    f"{factor.group(1)} ({declared}), the configured ROI has {actual}"
                )
                break


def _check_output(output: Any, metadata: Mapping[str, Any], bundle: Path, report: VerifyReport) -> bool:
    """The output against ``network_data_format.outputs.pred``: a tensor, channels, dtype, finite."""
    import torch
    from monai.utils import get_equivalent_dtype

    where = f"{bundle / 'configs' / 'metadata.json'}: network_data_format.outputs.pred"
    declared = metadata["network_data_format"].get("outputs", {}).get("pred")
    if not isinstance(output, torch.Tensor):
        report.problems.append(f"network output must be a tensor, got {type(output).__name__}")
        return False
    if not isinstance(declared, Mapping):
        report.problems.append(f"{where}: missing")
        return False
    ok = True
    channels = declared.get("num_channels")
    if output.dim() < 2 or output.shape[1] != channels:
        report.problems.append(f"{where}: declares {channels} channel(s), the network outputs {list(output.shape)}")
        ok = False
    dtype = get_equivalent_dtype(declared.get("dtype", "float32"), torch.Tensor)
    if output.dtype != dtype:
        report.problems.append(f"{where}: declares dtype {declared.get('dtype')}, the network outputs {output.dtype}")
        ok = False
    if not bool(torch.isfinite(output).all()):
        report.problems.append(f"network output on random inputs is not finite: {output.flatten()[:6].tolist()}")
        ok = False
    return ok
