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


def fit_covariate_head(
    network: Any, entries: Sequence[Mapping[str, Any]], transform: Any, target_key: str = "edss", ridge: float = 1e-3
) -> None:
    """Start a :class:`~monai_ms.networks.DualStreamRegressor`'s linear covariate path at the least-squares fit.

    The covariates (standardised demographics and the lesion load of the network's pre-trained lesion
    pathway) of every training session are computed once, without augmentation; ``covariate_head`` is
    set to the ridge solution for the standardised target and the MLP's last layer to zero, so training
    starts from the linear model and the CNN only learns what it leaves unexplained. On a few dozen
    scans the MLP otherwise memorises the training split long before the linear path has learnt.
    Call after :func:`fit_normalization` and ``load_lesion_network``.

    Args:
        network: the regressor (its normalisation buffers set).
        entries: training entries.
        transform: the evaluation chain producing ``t1``, ``t2``, ``demographics`` and ``target_key``.
        target_key: key of the target.
        ridge: L2 penalty of the fit (on standardised covariates).
    """
    captured: list[torch.Tensor] = []
    hook = network.covariate_head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    targets = []
    was_training = network.training
    network.eval()
    device = network.target_mean.device
    try:
        with torch.no_grad():
            for entry in entries:
                item = transform(dict(entry))
                t1, t2, demographics = (torch.as_tensor(item[key]).as_subclass(torch.Tensor)[None].to(device) for key in ("t1", "t2", "demographics"))
                network(t1, t2, demographics.float())
                targets.append(torch.as_tensor(item[target_key], dtype=torch.float64).reshape(1, -1))
    finally:
        hook.remove()
        network.train(was_training)
    x = torch.cat(captured).to(torch.float64).cpu()
    y = (torch.cat(targets) - network.target_mean.double().cpu()) / network.target_std.double().cpu()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    penalty = ridge * len(x) * torch.eye(design.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    solution = torch.linalg.solve(design.T @ design + penalty, design.T @ y)  # (covariates + 1, out)
    with torch.no_grad():
        network.covariate_head.weight.copy_(solution[:-1].T.to(network.covariate_head.weight))
        network.covariate_head.bias.copy_(solution[-1].to(network.covariate_head.bias))
        last = [m for m in network.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
