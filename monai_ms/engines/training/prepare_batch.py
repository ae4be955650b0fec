"""Batch preparation for networks with several inputs (T1, T2, demographics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["PrepareBatchMultiInput"]


class PrepareBatchMultiInput(PrepareBatch):
    """Pass several batch keys to ``network(*inputs)`` in order, with ``label_key`` as the target.

    MONAI's ``PrepareBatchExtraInput`` insists on the ``"image"``/``"label"`` keys; the monai_ms
    chains keep each modality under its own key (``"t1"``, ``"t2"``), so this takes them by name.

    Args:
        input_keys: batch keys passed positionally, e.g. ``("t1", "t2", "demographics")`` for
            ``DualStreamRegressor.forward(t1, t2, demographics)``.
        label_key: batch key of the target, several keys (the target is then a tuple of their tensors,
            e.g. ``("edss", "lesion")`` for a loss with an auxiliary lesion map), or ``None`` (inference).

    Examples:
        >>> prepare = PrepareBatchMultiInput(("t1", "t2", "demographics"), "edss")
        >>> batch = {"t1": torch.zeros(2, 1, 8, 8, 8), "t2": torch.zeros(2, 1, 8, 8, 8),
        ...          "demographics": torch.zeros(2, 2), "edss": torch.zeros(2, 1)}
        >>> first, label, rest, kwargs = prepare(batch)
        >>> first.shape, label.shape, len(rest)
        (torch.Size([2, 1, 8, 8, 8]), torch.Size([2, 1]), 2)
    """

    def __init__(self, input_keys: Sequence[str], label_key: str | Sequence[str] | None = None) -> None:
        if not input_keys:
            raise ValueError("input_keys must name at least one batch key")
        self.input_keys = list(input_keys)
        self.label_key = label_key
        self.label_keys = [] if label_key is None else [label_key] if isinstance(label_key, str) else list(label_key)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...] | None, tuple, dict]:
        missing = [key for key in self.input_keys + self.label_keys if key not in batchdata]
        if missing:
            raise KeyError(f"batch lacks keys {missing}; it has {sorted(batchdata)}")
        # a non-tensor input (e.g. the batch's session ids, a list of strings) is passed as it is
        inputs = [_to(batchdata[key], device, non_blocking, **kwargs) for key in self.input_keys]
        labels = tuple(batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs) for key in self.label_keys)
        label = None if not labels else labels[0] if isinstance(self.label_key, str) else labels
        return inputs[0], label, tuple(inputs[1:]), {}


def _to(value: Any, device: str | torch.device | None, non_blocking: bool, **kwargs: Any) -> Any:
    return value.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(value, torch.Tensor) else value
