"""Atomic file output: a file either appears complete or not at all.

Every result file of monai_ms (NIfTI, JSON, CSV, PNG, checkpoints) is written to a temporary file in
the destination folder and renamed into place, so an interrupted run never leaves a truncated file
that later reads as if it were complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "read_text",
    "sha256_file",
    "sha256_json",
    "write_json",
    "write_text",
    "write_csv",
    "save_nifti",
    "nifti_like",
    "save_figure",
]


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    Args:
        path: final destination.
        overwrite: if False, refuse (``FileExistsError``) when ``path`` already exists.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists.

    Examples:
        >>> with atomic_path("out/metrics.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix(es) so writers that dispatch on the extension (nibabel, matplotlib) work
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give results the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints and images can be large).

    The one file digest of monai_ms: checkpoint identity in result files and age-bias corrections,
    ``models/SHA256SUMS`` of exported bundles, and the model signature of resumable batch inference.

    Args:
        path: the file.
        chunk_size: bytes read at a time.

    Returns:
        64 lower-case hex digits.

    Raises:
        OSError: the file cannot be read.

    Examples:
        >>> sha256_file("models/model.pt")  # doctest: +SKIP
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hex SHA-256 of ``value`` as canonical JSON (sorted keys; what JSON cannot hold as ``str``).

    The digest of settings rather than files: run identities of cross-validation and the model signature of
    resumable batch inference (which keeps the first 16 digits).

    Examples:
        >>> sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def read_text(path: str | os.PathLike, what: str, error: type[Exception]) -> str:
    """The UTF-8 text of ``path``, or ``error`` with one line naming the file and ``what`` it should be.

    Args:
        path: the file.
        what: its role in words, e.g. ``"manifest"`` or ``"checksum file"``.
        error: the exception type raised (e.g. ``ManifestError``), without the OS traceback chained.

    Examples:
        >>> read_text("missing.json", "manifest", ValueError)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: missing.json: manifest not found (looked at ...missing.json)
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found (looked at {path.absolute()})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the {what}: {err}") from None


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it: two threads writing files at once (feature_table's workers) must
    # not interleave here, or the process is left with umask 0 (world-writable outputs from then on)
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def write_text(text: str, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike, overwrite: bool = True, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    text = json.dumps(_finite_or_none(obj), indent=indent, default=_json_default, allow_nan=False)
    return write_text(text + "\n", path, overwrite=overwrite)


def write_csv(frame: Any, path: str | os.PathLike, overwrite: bool = True, **to_csv_kwargs: Any) -> Path:
    """Write a ``pandas.DataFrame`` to ``path`` atomically (``index=False`` unless given)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, **to_csv_kwargs)
    return Path(path)


def save_nifti(image: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Save a ``nibabel`` image to ``path`` atomically and return the path."""
    import nibabel as nib

    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(image, str(tmp))
    return Path(path)


def nifti_like(reference: Any, data: np.ndarray, dtype: type) -> Any:
    """A NIfTI image of ``data`` with the reference's affine, orientation codes and units."""
    import nibabel as nib

    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), reference.affine, header)
    image.header.set_slope_inter(1.0, 0.0)  # the T1's intensity scaling must not rescale a mask
    image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    return image


def save_figure(figure: Any, path: str | os.PathLike, overwrite: bool = True, **savefig_kwargs: Any) -> Path:
    """Save a ``matplotlib`` figure to ``path`` atomically and return the path."""
    savefig_kwargs.setdefault("dpi", 100)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, **savefig_kwargs)
    return Path(path)


def _finite_or_none(value: Any) -> Any:
    # NaN / inf are not JSON: an undefined metric (Pearson r of a constant) is written as null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.generic):  # numpy scalars
        return _finite_or_none(value.item())
    return value


def _json_default(value: Any) -> Any:
    # numpy / torch scalars and arrays, Paths
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
