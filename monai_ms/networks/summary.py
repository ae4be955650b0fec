"""``monai-ms summary``: a torchinfo summary of a bundle's network with all of its inputs.

The network comes from the bundle's config (``network_def``), the inputs from
``configs/metadata.json`` -> ``network_data_format.inputs``, and image inputs take the config's
``roi_size``, so the printed shapes and parameter counts are those of the configured model.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_ms.errors import UserError

__all__ = ["summarize_network", "bundle_input_shapes", "load_bundle_network", "BundleError", "add_arguments", "run"]


class BundleError(UserError, ValueError):
    """A bundle folder, config or metadata file that cannot be used; the message names the file."""


def _forward_parameters(network: nn.Module) -> list[str]:
    parameters = inspect.signature(network.forward).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def summarize_network(
    network: nn.Module,
    input_shapes: Mapping[str, Sequence[int]],
    depth: int = 3,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> str:
    """Return the torchinfo summary of ``network`` run on zero tensors of the given shapes.

    Inputs are passed by name when every name is an argument of ``network.forward`` (e.g. ``t1``,
    ``t2``, ``demographics`` for :class:`~monai_ms.networks.DualStreamRegressor`), otherwise
    positionally in the mapping's order (e.g. a bundle's ``image`` for ``forward(x)``). The network
    runs in eval mode without gradients on the device of its parameters; its mode is restored.

    Args:
        network: the model to summarise.
        input_shapes: input name -> full shape including the batch dimension, e.g.
            ``{"t1": (1, 1, 32, 32, 32), "t2": (1, 1, 32, 32, 32), "demographics": (1, 2)}``.
        depth: how many levels of nested modules to list.
        dtypes: optional input name -> dtype (default ``torch.float32``).

    Returns:
        The summary table as text, ending with total / trainable parameter counts and sizes.

    Raises:
        ValueError: no inputs, a shape that is not a sequence of positive integers, or a number of
            inputs that does not match ``network.forward``.
        RuntimeError: the forward pass fails (torchinfo names the layers that ran).

    Examples::

        >>> from monai_ms.networks import DualStreamRegressor
        >>> net = DualStreamRegressor(channels=(8, 16, 32), strides=(2, 2, 2))
        >>> text = summarize_network(net, {"t1": (1, 1, 32, 32, 32), "t2": (1, 1, 32, 32, 32), "demographics": (1, 2)})
        >>> "Total params" in text
        True
    """
    from torchinfo import summary

    if not input_shapes:
        raise ValueError("input_shapes is empty: give at least one input name -> shape")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtypes = dict(dtypes or {})
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in input_shapes.items():
        shape = tuple(shape)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"input {name!r}: shape must be positive integers including the batch size, got {shape}")
        tensors[name] = torch.zeros(shape, dtype=dtypes.get(name, torch.float32), device=device)

    arguments = _forward_parameters(network)
    input_data: dict[str, torch.Tensor] | list[torch.Tensor]
    if set(tensors) <= set(arguments):
        input_data = tensors
    elif len(tensors) <= len(arguments):
        # bundle input names (e.g. "image") need not match forward's argument names ("x")
        input_data = list(tensors.values())
    else:
        raise ValueError(
            f"{type(network).__name__}.forward takes {arguments}, got {len(tensors)} inputs {list(tensors)}"
        )
    try:
        statistics = summary(
            network,
            input_data=input_data,
            depth=depth,
            device=device,
            mode="eval",
            verbose=0,
            col_names=("input_size", "output_size", "num_params"),
            row_settings=("var_names",),
        )
    except RuntimeError as error:
        # torchinfo's own message lists executed layers; the cause says what went wrong
        cause = error.__cause__ if error.__cause__ is not None else error
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        raise RuntimeError(f"{type(network).__name__} failed on inputs {shapes}: {cause}") from error
    return str(statistics)


def bundle_input_shapes(
    metadata: Mapping[str, Any], roi_size: Sequence[int] | None = None, source: str = "metadata.json"
) -> dict[str, tuple[int, ...]]:
    """Input shapes (batch size 1) from a bundle's metadata ``network_data_format.inputs``.

    Each input is ``{"num_channels": C, "spatial_shape": [...], ...}`` and becomes
    ``(1, C, *spatial_shape)`` (``(1, *spatial_shape)`` without ``num_channels``). When ``roi_size`` is
    given, it replaces every ``spatial_shape`` with as many dimensions as the ROI (the image inputs),
    so model-zoo style entries such as ``["16*n", "16*n", "16*n"]`` work; a vector input such as
    demographics is ``{"num_channels": 2, "spatial_shape": []}``.

    Args:
        metadata: the parsed ``metadata.json``.
        roi_size: the config's ``roi_size``, or None to use the metadata's spatial shapes.
        source: the file name used in error messages.

    Returns:
        Input name -> shape, in the metadata's order.

    Raises:
        BundleError: no ``network_data_format.inputs``, or an entry without usable integer sizes.

    Examples::

        >>> meta = {"network_data_format": {"inputs": {
        ...     "t1": {"num_channels": 1, "spatial_shape": ["16*n", "16*n", "16*n"]},
        ...     "demographics": {"num_channels": 2, "spatial_shape": []}}}}
        >>> bundle_input_shapes(meta, roi_size=[32, 32, 32])
        {'t1': (1, 1, 32, 32, 32), 'demographics': (1, 2)}
    """
    inputs = metadata.get("network_data_format", {}).get("inputs") if isinstance(metadata, Mapping) else None
    if not isinstance(inputs, Mapping) or not inputs:
        raise BundleError(f"{source}: network_data_format.inputs must be a non-empty object, got {inputs!r}")
    roi = tuple(roi_size) if roi_size is not None else None
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in inputs.items():
        where = f"{source}: network_data_format.inputs.{name}"
        if not isinstance(entry, Mapping):
            raise BundleError(f"{where} must be an object with num_channels and spatial_shape, got {entry!r}")
        spatial = entry.get("spatial_shape", [])
        if not isinstance(spatial, (list, tuple)):
            raise BundleError(f"{where}.spatial_shape must be a list, got {spatial!r}")
        if roi is not None and len(spatial) > 0 and len(spatial) == len(roi):
            spatial = roi
        channels = entry.get("num_channels")
        shape = tuple(spatial) if channels is None else (channels, *spatial)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            hint = "" if roi is not None else " (define roi_size in the config to size image inputs)"
            raise BundleError(f"{where}: num_channels and spatial_shape must be positive integers, got {shape}{hint}")
        shapes[name] = (1, *shape)
    return shapes


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise BundleError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from error


def load_bundle_network(
    bundle_dir: str | Path, config: str = "train.json"
) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    """Instantiate a bundle's ``network_def`` and read the shapes of its inputs.

    Args:
        bundle_dir: the bundle folder (with ``configs/``); it overrides the config's ``bundle_root``.
        config: config file name inside ``configs/`` (or a path to one).

    Returns:
        ``(network, input_shapes)`` as :func:`summarize_network` takes them.

    Raises:
        BundleError: a missing folder or file, invalid JSON, no ``network_def``, a network that cannot be
            built, or unusable input metadata.

    Examples::

        >>> network, shapes = load_bundle_network("bundles/edss")  # doctest: +SKIP
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: bundle folder not found")
    config_path = bundle / "configs" / config
    if not config_path.is_file() and Path(config).is_file():
        config_path = Path(config)
    metadata_path = bundle / "configs" / "metadata.json"
    _read_json(config_path)  # a clear message for a missing or broken file before MONAI parses it
    metadata = _read_json(metadata_path)

    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(bundle)
    if "network_def" not in parser:
        raise BundleError(f"{config_path}: no network_def defined")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
        roi_size = parser.get_parsed_content("roi_size") if "roi_size" in parser else None
    except Exception as error:
        # MONAI wraps the constructor's error in a generic one: report the original reason
        cause: BaseException = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise BundleError(f"{config_path}: cannot build network_def: {cause}") from error
    if not isinstance(network, nn.Module):
        raise BundleError(f"{config_path}: network_def must build a torch.nn.Module, got {type(network).__name__}")
    return network, bundle_input_shapes(metadata, roi_size, source=str(metadata_path))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms summary``."""
    parser.add_argument("bundle_dir", help="bundle folder containing configs/ (e.g. bundles/edss)")
    parser.add_argument(
        "--config", default="train.json", help="config file in BUNDLE_DIR/configs (default: train.json)"
    )
    parser.add_argument("--depth", type=int, default=3, help="levels of nested modules to list (default: 3)")


def run(args: argparse.Namespace) -> int:
    """Print the summary of the bundle's network; return 0, or 1 with one error line on stderr."""
    try:
        network, shapes = load_bundle_network(args.bundle_dir, args.config)
        text = summarize_network(network, shapes, depth=args.depth)
    except (BundleError, ValueError, RuntimeError) as error:
        print(f"monai-ms summary: error: {error}", file=sys.stderr)
        return 1
    inputs = ", ".join(f"{name}={list(shape)}" for name, shape in shapes.items())
    print(f"{type(network).__name__} from {args.bundle_dir} ({args.config}); inputs: {inputs}")
    print(text)
    return 0
