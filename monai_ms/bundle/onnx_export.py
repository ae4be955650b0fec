"""ONNX export of a bundle's network (``models/model.onnx``), checked against the checkpoint with ONNX Runtime.

:func:`export_onnx` builds ``network_def`` from ``configs/train.json``, loads ``models/model.pt``
(``weights_only=True``) and writes ``models/model.onnx`` with ``monai.networks.utils.convert_to_onnx``
(``torch.onnx.export`` traced, ``dynamo=False``, opset 17; MONAI's own ONNX Runtime verification on).
Every input of ``network_data_format.inputs`` is an ONNX input of the same name (EDSS: ``t1``, ``t2``,
``demographics``; the image-only bundles: their one image input), the output is ``pred``; the batch axis is
dynamic, and so are the spatial axes of patch inputs (lesion_seg's ``"8*n"`` patches). The bundle's metadata
version is stored in the ONNX model's ``metadata_props`` so a stale export is detected.

:func:`check_onnx` runs the ONNX model with ONNX Runtime (CPU) and the checkpoint with PyTorch on the
same random inputs at the configured ROI and compares them with ``torch.testing.assert_close``
(default ``rtol=1e-3``, ``atol=1e-4``: float32 kernels of the two runtimes sum in different orders).
Both functions need the optional extra ``pip install monai-ms[onnx]`` (``onnx``, ``onnxruntime``).

Running the exported model needs ONNX Runtime and NumPy only, on the network's input grid (the
preprocessing of ``inference.json`` is not in the ONNX graph)::

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("lesion_seg/models/model.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(["pred"], {"image": patch.astype(np.float32)})[0]  # (B, 2, D, H, W) -> (B, 1, D, H, W)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ms.errors import UserError

__all__ = ["ONNX_FILE", "OnnxExportError", "OnnxCheck", "check_onnx", "export_onnx", "onnx_available"]

ONNX_FILE = "model.onnx"
OPSET = 17
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
_PATCH_AXIS = re.compile(r"^\s*\d+\s*\*\s*n\s*$")


class OnnxExportError(UserError, ValueError):
    """The network cannot be exported to ONNX, or the ONNX model does not reproduce the checkpoint."""


@dataclass
class OnnxCheck:
    """What :func:`check_onnx` compared.

    Attributes:
        path: the ONNX model.
        inputs: input name -> shape of the random test inputs.
        max_abs_diff: the largest absolute difference between ONNX Runtime and PyTorch outputs.
        rtol: relative tolerance used.
        atol: absolute tolerance used.
    """

    path: Path
    inputs: dict[str, tuple[int, ...]]
    max_abs_diff: float
    rtol: float
    atol: float

    def describe(self) -> str:
        shapes = ", ".join(f"{name} {list(shape)}" for name, shape in self.inputs.items())
        return (f"{self.path}: ONNX Runtime output matches models/model.pt on {shapes} "
                f"(max |diff| {self.max_abs_diff:.2e}; rtol {self.rtol:g}, atol {self.atol:g})")


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` import (the optional extra ``monai-ms[onnx]``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx() -> None:
    if not onnx_available():
        raise OnnxExportError("ONNX export needs onnx and onnxruntime: pip install monai-ms[onnx]")


def _network_and_inputs(bundle: Path, config: str, checkpoint: Path | None, seed: int) -> tuple[Any, dict[str, Any], dict]:
    """The checkpoint's network (eval mode) and random inputs at the configured ROI, in metadata order."""
    import torch
    from monai.bundle import ConfigParser

    from monai_ms.bundle.verify import _configured_roi, _random_inputs
    from monai_ms.networks.summary import bundle_input_shapes

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def", instantiate=True)
    checkpoint = checkpoint or bundle / "models" / "model.pt"
    if not checkpoint.is_file():
        raise OnnxExportError(f"{checkpoint}: no checkpoint to export")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    network.load_state_dict(state, strict=True)
    network.eval()
    shapes = bundle_input_shapes(metadata, _configured_roi(parser), source=str(bundle / "configs" / "metadata.json"))
    return network, _random_inputs(shapes, metadata, seed), metadata


def export_onnx(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    config: str = "train.json",
    checkpoint: str | os.PathLike | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> OnnxCheck:
    """Write the bundle's network as ONNX and check it against the checkpoint with ONNX Runtime.

    Args:
        bundle_dir: a bundle folder with ``configs/`` and ``models/model.pt``.
        out: the ONNX file (default ``<bundle>/models/model.onnx``); written atomically.
        config: the config (in ``configs/``) that defines ``network_def`` and ``roi_size`` / ``patch_size``.
        checkpoint: the weights (default ``<bundle>/models/model.pt``).
        rtol: relative tolerance of the ONNX Runtime vs PyTorch comparison.
        atol: absolute tolerance of that comparison.
        seed: seed of the random test inputs.

    Returns:
        the :class:`OnnxCheck` of the written model.

    Raises:
        OnnxExportError: onnx/onnxruntime missing, no checkpoint, the export fails, or ONNX Runtime's
            output differs from the checkpoint's beyond the tolerance (the file is then not written).

    Examples:
        >>> check = export_onnx("bundles/lesion_seg")  # doctest: +SKIP
        >>> check.max_abs_diff < 1e-4  # doctest: +SKIP
        True
    """
    _require_onnx()
    import onnx
    import torch

    from monai_ms.io import atomic_path

    bundle = Path(bundle_dir)
    out = Path(out) if out is not None else bundle / "models" / ONNX_FILE
    network, tensors, metadata = _network_and_inputs(bundle, config, Path(checkpoint) if checkpoint else None, seed)
    declared = metadata["network_data_format"]["inputs"]
    dynamic_axes: dict[str, dict[int, str]] = {}
    for name in tensors:
        axes = {0: "batch"}
        spatial = declared[name].get("spatial_shape", [])
        for axis, size in enumerate(spatial):
            if isinstance(size, str) and _PATCH_AXIS.match(size):
                axes[2 + axis] = f"{name}_{'xyz'[axis] if axis < 3 else axis}"
        dynamic_axes[name] = axes
    dynamic_axes["pred"] = {0: "batch", **{a: n for a, n in dynamic_axes[next(iter(tensors))].items() if a >= 2}}
    from monai.networks.utils import convert_to_onnx

    with atomic_path(out) as target:
        try:
            # MONAI's exporter also runs the file with ONNX Runtime against the network (verify=True)
            convert_to_onnx(
                network, list(tensors.values()), input_names=list(tensors), output_names=["pred"], opset_version=OPSET,
                dynamic_axes=dynamic_axes, filename=str(target), verify=True, device=torch.device("cpu"), use_ort=True,
                rtol=rtol, atol=atol, use_trace=True, dynamo=False,
            )
        except AssertionError as error:
            detail = " ".join(str(error).split())[:300]
            raise OnnxExportError(f"{out}: ONNX Runtime output differs from the checkpoint: {detail}") from None
        except Exception as error:
            raise OnnxExportError(f"{bundle / 'configs' / config}: network_def does not export to ONNX: {error}") from error
        model = onnx.load(str(target))
        onnx.checker.check_model(model)
        onnx.helper.set_model_props(model, {"bundle_version": str(metadata.get("version", "")),
                                            "exported_by": "monai_ms.bundle.onnx_export"})
        onnx.save(model, str(target))
        result = _compare(target, network, tensors, rtol, atol)
    result.path = out
    return result


def check_onnx(
    bundle_dir: str | os.PathLike,
    onnx_file: str | os.PathLike | None = None,
    config: str = "train.json",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> OnnxCheck:
    """Run ``models/model.onnx`` with ONNX Runtime and the checkpoint with PyTorch; compare.

    Args:
        bundle_dir: the bundle folder.
        onnx_file: the ONNX model (default ``<bundle>/models/model.onnx``).
        config: the config that defines ``network_def``.
        rtol: relative tolerance.
        atol: absolute tolerance.
        seed: seed of the random inputs.

    Returns:
        the :class:`OnnxCheck`.

    Raises:
        OnnxExportError: onnx/onnxruntime missing, the file is not a valid ONNX model, its stored bundle
            version is not the metadata's, or the outputs differ beyond the tolerance.

    Examples:
        >>> print(check_onnx("lesion_seg").describe())  # doctest: +SKIP
    """
    _require_onnx()
    import onnx

    bundle = Path(bundle_dir)
    path = Path(onnx_file) if onnx_file is not None else bundle / "models" / ONNX_FILE
    network, tensors, metadata = _network_and_inputs(bundle, config, None, seed)
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as error:
        raise OnnxExportError(f"{path}: not a readable ONNX model: {error}") from error
    stored = props.get("bundle_version")
    if stored is not None and stored != str(metadata.get("version")):
        raise OnnxExportError(f"{path}: exported from bundle version {stored}, configs/metadata.json is "
                              f"version {metadata.get('version')} (a stale ONNX export)")
    result = _compare(path, network, tensors, rtol, atol)
    return result


def _compare(path: Path, network: Any, tensors: Mapping[str, Any], rtol: float, atol: float) -> OnnxCheck:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {name: tensor.numpy() for name, tensor in tensors.items()}
    expected_names = [i.name for i in session.get_inputs()]
    if sorted(expected_names) != sorted(feeds):
        raise OnnxExportError(f"{path}: ONNX inputs {expected_names} are not the bundle's inputs {list(feeds)}")
    (onnx_out,) = session.run(["pred"], feeds)
    with torch.no_grad():
        torch_out = network(*tensors.values())
    onnx_tensor = torch.from_numpy(onnx_out)
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    try:
        torch.testing.assert_close(onnx_tensor, torch_out, rtol=rtol, atol=atol)
    except AssertionError as error:
        detail = " ".join(str(error).split())[:300]
        raise OnnxExportError(f"{path}: ONNX Runtime output differs from models/model.pt: {detail}") from None
    diff = float((onnx_tensor - torch_out).abs().max()) if onnx_tensor.numel() else 0.0
    return OnnxCheck(path=path, inputs=shapes, max_abs_diff=diff, rtol=rtol, atol=atol)
