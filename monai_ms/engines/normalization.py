"""Input and target normalisation fitted on the training split and stored in the network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_ms.data.transforms import parse_sex

__all__ = ["fit_normalization"]


def fit_normalization(
    network: torch.nn.Module,
    entries: Sequence[Mapping[str, Any]],
    target_key: str | None = None,
    demographics: bool = True,
) -> dict[str, list[float]]:
    """Fit demographic and target statistics on the training entries and store them in ``network``.

    The statistics become buffers of the network (``set_normalization``), so checkpoints and the
    TorchScript export carry them: inference needs no side file and cannot use other statistics.
    Nothing from the validation or test split is looked at.

    Args:
        network: a monai_ms network with ``set_normalization`` (``DualStreamRegressor``,
            ``BrainRegressor3D``); a ``DistributedDataParallel`` wrapper is unwrapped.
        entries: manifest entries of the training split.
        target_key: regression target key (``"edss"``, ``"age"``), or ``None`` (classification).
        demographics: fit the (age, sex) statistics.

    Returns:
        the fitted statistics, as stored.
    """
    module = getattr(network, "module", network)
    if not entries:
        raise ValueError("cannot fit normalisation statistics on an empty training split")
    stats: dict[str, Any] = {}
    if demographics:
        features = np.array([[float(e["age"]), parse_sex(e["sex"])] for e in entries], dtype=np.float64)
        std = features.std(axis=0)
        stats["demographics_mean"] = features.mean(axis=0).tolist()
        stats["demographics_std"] = np.where(std > 0, std, 1.0).tolist()  # a one-sex cohort: leave sex unscaled
    if target_key is not None:
        target = np.array([float(e[target_key]) for e in entries], dtype=np.float64)
        stats["target_mean"] = float(target.mean())
        stats["target_std"] = float(target.std()) if target.std() > 0 else 1.0
    module.set_normalization(**stats)
    return stats
