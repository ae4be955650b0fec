"""Mixed precision on the CPU: bf16 autocast around any MONAI inferer.

MONAI's ``SupervisedTrainer(amp=True)`` / ``SupervisedEvaluator(amp=True)`` autocast to fp16 on CUDA
only. On a CPU, bfloat16 autocast runs the convolutions about twice as fast
(``benchmarks/train_step.py``: 2.1x for the lesion segmenter's training step on 2 cores), and bfloat16 has
float32's exponent range, so no loss scaling is needed. :class:`AutocastInferer` wraps the inferer a
bundle already uses, so the engines, losses and metrics stay as they are: the network runs under
autocast, and its outputs are returned in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "cpu_autocast", "cpu_supports_bf16"]

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cpu_autocast(setting: Any, device: torch.device | str) -> str | None:
    """The autocast dtype name a bundle's ``autocast`` setting asks for on ``device``.

    Args:
        setting: ``"bf16"`` / ``"bfloat16"``, or ``None`` / ``False`` / ``""`` for full precision.
        device: the training device. On CUDA the bundles use MONAI's own ``amp`` (fp16 with a gradient
            scaler) instead, so this returns ``None`` there; so it does on a CPU without bfloat16
            instructions (:func:`cpu_supports_bf16`), where bf16 autocast is slower than full precision.

    Raises:
        ValueError: an unknown setting (the rule and the value).
    """
    if setting in (None, False, "", "none", "fp32", "float32"):
        return None
    if str(setting) not in _DTYPES:
        raise ValueError(f"autocast must be 'bf16' or None (full precision), got {setting!r}")
    if torch.device(device).type == "cuda":
        return None
    if _DTYPES[str(setting)] == torch.bfloat16 and not cpu_supports_bf16():
        logger.info("autocast bf16: this CPU has no bfloat16 instructions (AVX-512 BF16 / AMX), where bf16 is slower: full precision")
        return None
    return str(setting)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX); elsewhere bf16 autocast is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _to_float32(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float32(item) for item in output)
    if isinstance(output, dict):
        return {key: _to_float32(value) for key, value in output.items()}
    return output


class AutocastInferer(Inferer):
    """Run another inferer under ``torch.autocast``; floating-point outputs come back as float32.

    Args:
        inferer: the inferer to wrap (``SimpleInferer``, ``SlidingWindowInferer``, ...).
        dtype: ``"bf16"`` (bfloat16) or ``"fp16"``; ``None`` disables autocast (the wrapped inferer as is).
        device_type: ``"cpu"`` or ``"cuda"``.

    Shapes:
        whatever the wrapped inferer returns (tensors, or tuples / dicts of them), in float32.

    Examples:
        >>> from monai.inferers import SimpleInferer
        >>> inferer = AutocastInferer(SimpleInferer(), dtype="bf16")
        >>> inferer(torch.ones(1, 1, 4, 4, 4), torch.nn.Conv3d(1, 1, 3, padding=1)).dtype
        torch.float32
    """

    def __init__(self, inferer: Inferer | Callable[..., Any], dtype: str | None = "bf16", device_type: str = "cpu") -> None:
        super().__init__()
        if dtype is not None and str(dtype) not in _DTYPES:
            raise ValueError(f"AutocastInferer: dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
        self.inferer = inferer
        self.dtype = None if dtype is None else _DTYPES[str(dtype)]
        self.device_type = device_type

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = self.inferer(inputs, network, *args, **kwargs)
        return _to_float32(output)
