"""Named steps the bundle configs call, so that no config line carries Python logic of its own.

Each replaces an expression that used to be written out (and copied) in the JSON files:

- :func:`prepare_training`: the checks every training run makes first, in order (every ``train.json`` and
  ``multi_gpu_train.json``, which used to copy them with their multi-GPU variants);
- :func:`start_distributed` / :func:`init_distributed`: the process group of a ``torchrun`` run (every
  ``multi_gpu_train.json``);
- :func:`rank_partition`: this rank's share of a datalist (every ``multi_gpu_train.json``, training and
  validation);
- :func:`sync_batch_norm`: the network of a multi-GPU run with its batch norms synchronised across ranks
  (brain_age and sex ``multi_gpu_train.json``);
- :func:`scaled_head_param_groups`: optimizer parameter groups with one sub-module at a larger learning
  rate (the EDSS covariate head);
- :func:`swap_transform`: a chain with one kind of transform replaced (the sex bundle's size-normalised
  variant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "prepare_training",
    "start_distributed",
    "init_distributed",
    "rank_partition",
    "saliency_streams",
    "scaled_head_param_groups",
    "swap_transform",
    "sync_batch_norm",
]


def init_distributed(timeout_hours: float | None = None) -> bool:
    """Join the process group ``torchrun`` set up (NCCL on GPUs, gloo on the CPU), once.

    Args:
        timeout_hours: how long a collective may wait (None: PyTorch's default, 10 min for gloo/NCCL). The EDSS
            bundle waits up to 6 h, while rank 0 trains the lesion stage and the others wait at a barrier.

    Returns:
        True (a config ``initialize`` step).
    """
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = None if timeout_hours is None else datetime.timedelta(hours=float(timeout_hours))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return True


def start_distributed(device: Any, timeout_hours: float | None = None) -> bool:
    """The first step of a ``multi_gpu_train.json`` run: join the process group, pin this rank's GPU, sync ignite.

    Args:
        device: this rank's device (``cuda:<LOCAL_RANK>``, or the CPU under gloo).
        timeout_hours: see :func:`init_distributed`.

    Returns:
        True (a config ``initialize`` step).
    """
    import ignite.distributed
    import torch

    init_distributed(timeout_hours)
    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    ignite.distributed.sync()
    return True


def prepare_training(
    ckpt_dir: str,
    output_dir: str,
    resume: bool,
    seed: int,
    cohort_checks: Sequence[Mapping[str, Any]],
    main_process: bool = True,
    distributed: bool = False,
) -> bool:
    """The checks every training run makes before anything is built, in this order, then the seed.

    1. every override names a key of the config (:func:`monai_ms.bundle.check_overrides`);
    2. ``resume`` has a checkpoint to resume from, and no finished run is overwritten by accident
       (:func:`monai_ms.engines.check_resume`);
    3. on the main process, each of ``cohort_checks`` passes (:func:`monai_ms.bundle.validate_cohort`), one
       report of every problem and exit status 1 otherwise; the other ranks wait at a barrier;
    4. on the main process, the output folders are writable (:func:`monai_ms.engines.check_writable`);
    5. ``monai.utils.set_determinism(seed)``.

    Args:
        ckpt_dir: the bundle's ``ckpt_dir``.
        output_dir: the bundle's ``output_dir``.
        resume: the ``resume`` setting.
        seed: the run's seed.
        cohort_checks: keyword arguments of :func:`monai_ms.bundle.validate_cohort` for each check; a check with
            ``"enabled": False`` is skipped (the EDSS lesion-mask check without a ``lesion_key``).
        main_process: rank 0 (always True outside ``torchrun``).
        distributed: a ``torchrun`` run (the barrier after the cohort checks).

    Returns:
        True (a config ``initialize`` step).
    """
    from monai.utils import set_determinism

    from monai_ms.bundle.cohort import validate_cohort
    from monai_ms.bundle.config import check_overrides
    from monai_ms.engines import check_resume, check_writable

    check_overrides()
    check_resume(ckpt_dir, resume)
    if main_process:
        for check in cohort_checks:
            arguments = dict(check)
            if arguments.pop("enabled", True):
                validate_cohort(**arguments)
    if distributed:
        import torch.distributed

        torch.distributed.barrier()
    if main_process:
        check_writable(ckpt_dir, output_dir)
    set_determinism(seed=seed)
    return True


def rank_partition(data: Sequence[Any], shuffle: bool = False, seed: int = 0, even_divisible: bool = False) -> list:
    """This rank's share of ``data`` (``monai.data.partition_dataset`` over the world size).

    Args:
        data: the datalist.
        shuffle: shuffle before partitioning (training: ``True`` with the run's ``seed``).
        seed: shuffle seed, the same on every rank.
        even_divisible: repeat entries so every rank gets as many (training, where ranks step together).

    Returns:
        the entries of ``torch.distributed.get_rank()``.

    Examples:
        In ``multi_gpu_train.json``: ``"train#dataset#data": "$monai_ms.bundle.rank_partition(@train#datalist,
        True, @seed, True)"``.
    """
    import torch.distributed as dist
    from monai.data import partition_dataset

    parts = partition_dataset(
        data=data, num_partitions=dist.get_world_size(), shuffle=shuffle, seed=seed, even_divisible=even_divisible
    )
    return parts[dist.get_rank()]


def sync_batch_norm(network: Any, device: Any) -> Any:
    """``network`` on ``device``, its batch norms synchronised across ranks when the run is on GPUs.

    With ``DistributedDataParallel`` each rank's batch norm otherwise sees only its own share of a batch
    (2 volumes of 4 on 2 GPUs). ``SyncBatchNorm`` needs CUDA, so a CPU (gloo) run keeps the network's own.

    Args:
        network: the model (``network_def``).
        device: this rank's device.

    Returns:
        the network, converted or not, on ``device``.
    """
    import torch

    if torch.cuda.is_available():
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return network.to(device)


def scaled_head_param_groups(network: Any, head: str, scale: float, learning_rate: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: ``network.<head>`` at ``scale x learning_rate``, the rest at the default.

    Args:
        network: the model.
        head: name of the sub-module trained faster (``"covariate_head"``: the EDSS linear covariate path,
            which starts at its least-squares fit and should track the MLP).
        scale: its learning-rate factor.
        learning_rate: the optimizer's learning rate.

    Returns:
        ``[{"params": head parameters, "lr": scale * learning_rate}, {"params": every other parameter}]``.

    Raises:
        AttributeError: ``network`` has no sub-module ``head``.
    """
    prefix = f"{head}."
    head_parameters = list(getattr(network, head).parameters())
    others = [p for name, p in network.named_parameters() if not name.startswith(prefix)]
    return [{"params": head_parameters, "lr": scale * learning_rate}, {"params": others}]


def swap_transform(chain: Any, kind: type, replacement: Any, append: Sequence[Any] = ()) -> Any:
    """``chain`` (flattened) with every transform of type ``kind`` replaced by ``replacement``, then ``append``.

    Args:
        chain: a ``monai.transforms.Compose``.
        kind: the transform class to replace, e.g. ``monai.transforms.ResizeWithPadOrCropd``.
        replacement: the transform put in its place, e.g. a ``Resized`` to a fixed size.
        append: transforms added at the end (e.g. the channel concatenation).

    Returns:
        a new ``Compose``.

    Examples:
        In ``sex/configs/size_normalised.json``: ``"$monai_ms.bundle.swap_transform(@train#paired,
        monai.transforms.ResizeWithPadOrCropd, @size_normalise, [@concat_inputs])"``.
    """
    from monai.transforms import Compose

    steps = [replacement if isinstance(t, kind) else t for t in chain.flatten().transforms]
    return Compose(steps + list(append))


def saliency_streams(stream_keys: Sequence[str], level: int | str) -> dict[str, dict[str, str]]:
    """The saliency streams of a dual-stream network: one per image stream, named by its batch key.

    Args:
        stream_keys: the two batch keys of the streams, T1 first
            (:func:`monai_ms.networks.stream_keys`: ``("t1", "t2")``, ``("t1", "flair")`` or ``("t1", "contrasts")``).
        level: the encoder block whose activations the maps are computed at (``0`` = full resolution).

    Returns:
        ``{key: {"input_key": key, "target_layer": "<encoder>.blocks.<level>"}}``: the T1 stream reads
        ``t1_encoder``, the second one ``t2_encoder`` (the attribute keeps that name whatever it reads).

    Examples:
        >>> saliency_streams(("t1", "flair"), 1)["flair"]
        {'input_key': 'flair', 'target_layer': 't2_encoder.blocks.1'}
    """
    if len(stream_keys) != 2:
        raise ValueError(f"a dual-stream network has 2 image streams, got {list(stream_keys)}")
    encoders = ("t1_encoder", "t2_encoder")
    return {key: {"input_key": key, "target_layer": f"{encoder}.blocks.{level}"} for key, encoder in zip(stream_keys, encoders)}
