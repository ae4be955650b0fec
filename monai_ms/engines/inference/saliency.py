"""Explain predictions: 3D saliency maps in each scan's own T1 space, pictures and per-region means.

The maps come from ``monai.visualize`` (nothing is re-implemented here):

- ``"gradcam"`` / ``"gradcampp"``: Grad-CAM / Grad-CAM++ on one encoder level of each stream (default
  the last one), upsampled to the network grid. Non-negative, in the network's output units per
  feature: where the features raise the explained output. One forward and one backward pass per
  stream and session (about a second per session for the EDSS network at 2 mm on a CPU).
- ``"occlusion"``: ``OcclusionSensitivity`` with a Gaussian occluder of ``mask_size`` voxels moved with
  ``overlap``; the map is ``output(original) - output(occluded)``: positive where hiding the region
  lowers the explained output, negative where it raises it. Expensive: one forward pass per window and
  stream, ``prod(ceil((S - m) / (m * (1 - overlap))) + 1)`` windows for an ROI ``S`` and a mask ``m``
  (252 windows for 80 x 96 x 80 with the default ``m = 24``, ``overlap = 0.5``); the mask is cut to the
  ROI where the ROI is smaller.

The explained output is the network's single output (EDSS, age); with ``explain_predicted_class``
(binary classifiers: the sex logit) it is multiplied by the sign of the unperturbed logit, so the map
shows the evidence for the class the model predicted (female as well as male).

Each map is mapped back onto the scan's original T1 grid with ``monai.transforms.Invertd`` of the
bundle's (invertible) preprocessing, as the lesion masks of the ``lesion_seg`` bundle are, so it
overlays on the user's own T1 in any viewer. Region means (lesion, normal-appearing white matter,
grey matter) are taken there, against the manifest's ``lesion`` mask and ``tissue`` labels
(0 background, 1 CSF, 2 GM, 3 WM, 4 lesion).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from monai_ms.data.fields import DEFAULT_MODALITIES, IMAGE_KEYS
from monai_ms.engines.handlers.common import source_file, to_numpy
from monai_ms.engines.inference.segmentation import input_files, output_path
from monai_ms.io import nifti_like, save_figure, save_nifti, write_csv

__all__ = [
    "METHODS",
    "TISSUE_LABELS",
    "SingleInputView",
    "SaliencyExplainer",
    "region_saliency",
    "summarize_regions",
    "save_saliency_figure",
    "SaliencyRunner",
]

logger = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcampp", "occlusion")
TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "lesion": 4}
REGIONS = ("lesion", "nawm", "gm", "brain")


class SingleInputView(nn.Module):
    """One input of a (multi-input) network as the only input; the others stay fixed.

    ``monai.visualize`` calls ``network(x)`` with one image. This view puts ``x`` at ``position`` of the
    network's inputs and repeats the fixed inputs (set per scan with :meth:`set_inputs`) along the batch,
    which ``OcclusionSensitivity`` needs (it batches occluded copies of ``x`` only).

    Args:
        network: the network, called as ``network(*inputs)``.
        position: index of the explained input among the network's inputs.
        explain_predicted_class: multiply the output by the sign of the unperturbed output (a binary
            classifier's logit), so that saliency is evidence for the predicted class.

    Shapes:
        ``forward(x)``: ``x`` ``(B, C, *spatial)``; fixed inputs ``(1, ...)`` -> ``(B, out_channels)``.

    Examples:
        >>> net = nn.Bilinear(2, 3, 1)  # any two-input network
        >>> view = SingleInputView(net, position=0)
        >>> _ = view.set_inputs([torch.zeros(1, 2), torch.ones(1, 3)])  # returns the unperturbed output
        >>> view(torch.zeros(4, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(self, network: nn.Module, position: int = 0, explain_predicted_class: bool = False) -> None:
        super().__init__()
        self.network = network
        self.position = int(position)
        self.explain_predicted_class = explain_predicted_class
        self.inputs: list[torch.Tensor] = []
        self.sign = 1.0
        # created in eval mode: monai.visualize restores the wrapper's mode after each call, and a view left
        # in training mode would put the network's batch norm back into training (batch statistics)
        self.eval()

    def set_inputs(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fix the network inputs of one scan (batch size 1); returns the unperturbed output ``(1, out)``."""
        self.eval()
        self.inputs = list(inputs)
        with torch.no_grad():
            self.sign = 1.0
            output = self.network(*self.inputs)
        if self.explain_predicted_class:
            self.sign = -1.0 if float(output.flatten()[0]) < 0 else 1.0
        return output * self.sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = [t.expand(x.shape[0], *t.shape[1:]) for t in self.inputs]
        args[self.position] = x
        return self.network(*args) * self.sign


def _identity(x: torch.Tensor) -> torch.Tensor:
    # monai.visualize's default post-processing rescales each map to (1, 0), flipping it and losing the
    # scale that makes T1 and T2 maps of one scan comparable
    return x


class SaliencyExplainer:
    """Saliency maps of each stream of a network for one preprocessed scan, on the network grid.

    Args:
        network: the bundle's network (loaded weights; put in eval mode here).
        input_keys: the network's inputs, in call order (``["t1", "t2", "demographics"]``, ``["image"]``).
        streams: saliency name -> ``{"input_key": key, "target_layer": name}``, one per explained image
            input; ``target_layer`` (a module name of ``network``, e.g. ``"t1_encoder.blocks.3"``) is needed
            by the CAM methods only. E.g. ``{"t1": {"input_key": "t1", "target_layer": "t1_encoder.blocks.3"},
            "t2": {"input_key": "t2", "target_layer": "t2_encoder.blocks.3"}}``.
        method: one of :data:`METHODS`.
        mask_size: occlusion: occluder size in voxels (one value or one per axis), cut to the ROI.
        overlap: occlusion: overlap of neighbouring occluder positions, in [0, 1).
        n_batch: occlusion: occluded copies per forward pass.
        explain_predicted_class: see :class:`SingleInputView` (binary classifiers).

    Raises:
        ValueError: an unknown method, a stream whose input key is not a network input, a target layer the
            network does not have (the message lists the encoder levels), or a bad occlusion setting.

    Examples:
        >>> from monai_ms.networks import BrainRegressor3D
        >>> net = BrainRegressor3D(channels=(4, 8), strides=(2, 2))
        >>> explainer = SaliencyExplainer(net, ["image"], {"t1": {"input_key": "image", "target_layer": "encoder.blocks.1"}})
        >>> explainer({"image": torch.rand(1, 16, 16, 16)})["t1"].shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        network: nn.Module,
        input_keys: Sequence[str],
        streams: Mapping[str, Mapping[str, Any]],
        method: str = "gradcam",
        mask_size: int | Sequence[int] = 24,
        overlap: float = 0.5,
        n_batch: int = 8,
        explain_predicted_class: bool = False,
    ) -> None:
        from monai.visualize import GradCAM, GradCAMpp

        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"occlusion overlap must be in [0, 1), got {overlap!r}")
        if int(n_batch) < 1:
            raise ValueError(f"occlusion n_batch must be >= 1, got {n_batch!r}")
        sizes = np.atleast_1d(np.asarray(mask_size))
        if sizes.size not in (1, 3) or np.any(sizes < 1):
            raise ValueError(f"occlusion mask_size must be one or three positive voxel counts, got {mask_size!r}")
        if not streams:
            raise ValueError("streams must name at least one image input to explain")
        self.network = network
        self.input_keys = list(input_keys)
        self.method = method
        self.mask_size = [int(s) for s in np.broadcast_to(sizes, (3,))]
        self.overlap, self.n_batch = float(overlap), int(n_batch)
        modules = dict(network.named_modules())
        self.views: dict[str, SingleInputView] = {}
        self.cams: dict[str, Any] = {}
        self.prediction = math.nan  # the network's first output for the last explained scan
        for name, spec in streams.items():
            key = spec.get("input_key")
            if key not in self.input_keys:
                raise ValueError(f"stream {name!r}: input_key must be one of the network inputs {self.input_keys}, got {key!r}")
            view = SingleInputView(network, self.input_keys.index(key), explain_predicted_class)
            self.views[name] = view
            if method == "occlusion":
                continue
            layer = spec.get("target_layer")
            if layer not in modules:
                levels = [n for n in modules if n.count(".") == 2 and ".blocks." in n]
                raise ValueError(f"stream {name!r}: target_layer {layer!r} is not a module of the network; encoder levels: {levels}")
            cam_class = GradCAM if method == "gradcam" else GradCAMpp
            # hooks are registered once per stream (not per scan), on the view's "network." submodule
            self.cams[name] = cam_class(nn_module=view, target_layers=f"network.{layer}", postprocessing=_identity)

    @property
    def streams(self) -> list[str]:
        """Names of the explained streams (the modality labels of the output files)."""
        return list(self.views)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Maps of one scan.

        Args:
            inputs: input key -> one preprocessed (unbatched) input, e.g. ``t1`` ``(1, D, H, W)``,
                ``demographics`` ``(2,)``.

        Returns:
            stream name -> float32 map ``(1, D, H, W)`` on the network grid (CPU).
        """
        from monai.visualize import OcclusionSensitivity

        device = next(self.network.parameters()).device
        # plain tensors: the network needs no metadata, and MetaTensor tracking slows the backward pass
        tensors = [_plain(inputs[key])[None].to(device) for key in self.input_keys]
        maps: dict[str, torch.Tensor] = {}
        for name, view in self.views.items():
            baseline = view.set_inputs(tensors)
            self.prediction = float(baseline.flatten()[0]) * view.sign
            x = tensors[view.position]
            if self.method == "occlusion":
                mask = [min(m, s) for m, s in zip(self.mask_size, x.shape[2:])]
                occlusion = OcclusionSensitivity(
                    view, mask_size=mask, n_batch=self.n_batch, verbose=False, overlap=self.overlap, activate=False
                )
                with torch.no_grad(), warnings.catch_warnings():
                    # MONAI 1.6 indexes tensors with lists, which torch 2.13 warns about on every window
                    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                    occluded, _ = occlusion(x)
                saliency = baseline[:, :1].reshape(1, 1, *[1] * (x.ndim - 2)) - occluded[:, :1]
            else:
                saliency = self.cams[name](x)
            maps[name] = torch.as_tensor(saliency).detach().float().cpu()[0]
        return maps


def _plain(value: Any) -> torch.Tensor:
    from monai.data import MetaTensor

    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def _mean(values: np.ndarray, region: np.ndarray | None) -> tuple[float, int]:
    if region is None:
        return math.nan, 0
    count = int(region.sum())
    return (float(values[region].mean()) if count else math.nan), count


def region_saliency(
    saliency: Any,
    lesion: Any | None = None,
    tissue: Any | None = None,
    brain: Any | None = None,
) -> dict[str, float]:
    """Mean saliency inside lesions, normal-appearing white matter (NAWM), grey matter, CSF and the brain.

    Regions: lesion = ``lesion > 0`` (or, without a lesion mask, ``tissue == 4``); NAWM = ``tissue == 3``
    outside lesions; GM = ``tissue == 2`` and CSF = ``tissue == 1`` outside lesions; brain = ``tissue > 0`` (or ``brain`` when
    there are no tissue labels). A region that cannot be formed (its map is missing) or is empty gets
    NaN, never 0, so a CSV shows an empty cell.

    Args:
        saliency: map ``(D, H, W)`` (or ``(1, D, H, W)``), e.g. on the scan's T1 grid.
        lesion: binary lesion mask on the same grid, or ``None``.
        tissue: integer tissue labels on the same grid (see :data:`TISSUE_LABELS`), or ``None``.
        brain: binary brain mask used when ``tissue`` is ``None`` (e.g. the non-zero T1 voxels), or ``None``.

    Returns:
        ``lesion_mean``, ``nawm_mean``, ``gm_mean``, ``csf_mean``, ``brain_mean``, ``lesion_voxels``,
        ``nawm_voxels``, ``gm_voxels``, ``csf_voxels``, ``lesion_to_nawm`` (ratio of the means; NaN unless both are >= 0 and NAWM's > 0) and
        ``lesion_above_nawm`` (1.0 / 0.0).

    Raises:
        ValueError: a mask whose shape differs from the map's.

    Examples:
        >>> tissue = np.array([[[3, 3, 2, 0]]]); lesion = np.array([[[1, 0, 0, 0]]])
        >>> r = region_saliency(np.array([[[4.0, 1.0, 2.0, 9.0]]]), lesion, tissue)
        >>> r["lesion_mean"], r["nawm_mean"], r["gm_mean"], r["lesion_to_nawm"]
        (4.0, 1.0, 2.0, 4.0)
    """
    values = np.asarray(to_numpy(saliency), dtype=np.float64)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]

    def _on_grid(mask: Any, name: str) -> np.ndarray | None:
        if mask is None:
            return None
        array = np.asarray(to_numpy(mask))
        array = array.reshape(array.shape[1:]) if array.ndim == 4 and array.shape[0] == 1 else array
        if array.shape != values.shape:
            raise ValueError(f"{name} has shape {array.shape}, the saliency map {values.shape}: they must be on one grid")
        return array

    lesion_a, tissue_a, brain_a = _on_grid(lesion, "lesion mask"), _on_grid(tissue, "tissue map"), _on_grid(brain, "brain mask")
    tissue_i = None if tissue_a is None else np.rint(tissue_a).astype(np.int64)
    lesion_b = lesion_a > 0 if lesion_a is not None else (tissue_i == TISSUE_LABELS["lesion"] if tissue_i is not None else None)
    outside = ~lesion_b if lesion_b is not None else True
    nawm = None if tissue_i is None else (tissue_i == TISSUE_LABELS["wm"]) & outside
    gm = None if tissue_i is None else (tissue_i == TISSUE_LABELS["gm"]) & outside
    csf = None if tissue_i is None else (tissue_i == TISSUE_LABELS["csf"]) & outside
    whole = tissue_i > 0 if tissue_i is not None else (brain_a > 0 if brain_a is not None else None)
    row: dict[str, float] = {}
    counts = {}
    for name, region in (("lesion", lesion_b), ("nawm", nawm), ("gm", gm), ("csf", csf), ("brain", whole)):
        row[f"{name}_mean"], counts[name] = _mean(values, region)
    row.update({f"{name}_voxels": (counts[name] if region is not None else math.nan)
                for name, region in (("lesion", lesion_b), ("nawm", nawm), ("gm", gm), ("csf", csf))})
    lesion_mean, nawm_mean = row["lesion_mean"], row["nawm_mean"]
    defined = math.isfinite(lesion_mean) and math.isfinite(nawm_mean)
    # a ratio says "times NAWM" only for positive maps (CAMs); signed occlusion maps get none
    row["lesion_to_nawm"] = lesion_mean / nawm_mean if defined and nawm_mean > 0 and lesion_mean >= 0 else math.nan
    row["lesion_above_nawm"] = float(lesion_mean > nawm_mean) if defined else math.nan
    return row


def summarize_regions(
    frame: pd.DataFrame, session_key: str = "session", group_keys: Sequence[str] = ("modality", "method")
) -> pd.DataFrame:
    """Append one ``mean`` row per modality (and method): the mean of every numeric column over the sessions.

    Means skip undefined (NaN) cells, so ``lesion_above_nawm`` becomes the share of sessions where lesion
    saliency is above NAWM saliency, and ``lesion_to_nawm`` the mean of the per-session ratios.

    Args:
        frame: per-session rows of :func:`region_saliency` plus ``session`` and ``modality`` columns.
        session_key: column written ``"mean"`` in the summary rows.
        group_keys: one summary row per combination of these columns (those present in ``frame``).

    Returns:
        the rows followed by the summary rows (columns in the same order).
    """
    if frame.empty:
        return frame
    groups = [key for key in group_keys if key in frame.columns]
    numeric = [c for c in frame.columns if c not in (session_key, *groups) and pd.api.types.is_numeric_dtype(frame[c])]
    summary = frame.groupby(groups, sort=False)[numeric].mean().reset_index()
    summary[session_key] = "mean"
    summary["n_sessions"] = frame.groupby(groups, sort=False)[session_key].count().to_numpy()
    return pd.concat([frame, summary], ignore_index=True)[list(frame.columns) + ["n_sessions"]]


def save_saliency_figure(
    rows: Sequence[tuple[str, Any, Any]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Orthogonal slices (sagittal, coronal, axial) of images with a saliency map overlaid.

    Each row is cut through the peak of its map inside the brain (non-zero image voxels; the map is shown
    there only). Non-negative maps are drawn with ``hot`` from 0 to their
    maximum (below 20% of it transparent); signed maps (occlusion) with ``coolwarm`` symmetric about 0.
    Arrays are shown as given: pass RAS arrays (the network grid) for the usual radiological layout.

    Args:
        rows: ``(label, image, saliency)`` per row, arrays ``(X, Y, Z)`` on one grid.
        path: PNG to write (atomically).
        title: figure title.

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9.5, 3.0 * len(rows)), squeeze=False)
    for r, (label, image, saliency) in enumerate(rows):
        image = np.asarray(to_numpy(image), dtype=np.float32).reshape(np.shape(to_numpy(saliency))[-3:])
        sal = np.asarray(to_numpy(saliency), dtype=np.float32).reshape(image.shape)
        inside = image != 0
        # coarse CAMs spill into the background and the padding; show and cut through the brain only
        sal = np.where(inside, sal, 0.0) if inside.any() else sal
        peak = np.unravel_index(int(np.argmax(np.abs(sal))), sal.shape)
        brain = image[inside]
        image = np.ma.masked_where(~inside, image)
        gray = plt.get_cmap("gray").with_extremes(bad="black")
        low, high = np.percentile(brain, (1, 99)) if brain.size else (0.0, 1.0)
        signed = bool((sal < 0).any())
        top = float(np.abs(sal).max()) or 1.0
        if signed:
            overlay = np.ma.masked_where(np.abs(sal) < 0.2 * top, sal)
            cmap, vmin, vmax = "coolwarm", -top, top
        else:
            overlay = np.ma.masked_where(sal < 0.2 * top, sal)
            cmap, vmin, vmax = "hot", 0.0, top
        cuts = [(0, "sagittal"), (1, "coronal"), (2, "axial")]
        shown = None
        for c, (axis, plane) in enumerate(cuts):
            index = [slice(None)] * 3
            index[axis] = peak[axis]
            ax = axes[r, c]
            ax.imshow(image[tuple(index)].T, cmap=gray, origin="lower", vmin=low, vmax=high, interpolation="nearest")
            shown = ax.imshow(overlay[tuple(index)].T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", alpha=0.6, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{label} {plane} {'xyz'[axis]}={peak[axis]}", fontsize=8)
        fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
    fig.suptitle(title, fontsize=10)
    written = save_figure(fig, path)
    plt.close(fig)
    return written


class SaliencyRunner:
    """Explain every scan of a dataset: NIfTI maps on each T1 grid, a PNG per scan, a region CSV.

    Per session, under ``output_dir``:

    - ``<session>_<stream>_<method>.nii.gz``: float32 map with the input T1's shape, affine and orientation
      (the preprocessing inverted with ``Invertd``; the region outside the network's crop is 0);
    - ``png/<session>_<method>.png``: orthogonal slices of each modality with its map (network grid).

    After the run, ``regions_<method>.csv``: one row per session and stream with the network's output
    (``prediction``: EDSS, years, or the sex logit), the region means of
    :func:`region_saliency` (lesion mask and tissue labels read from the manifest entry's ``lesion`` and
    ``tissue`` files when present, empty cells otherwise), the map file, then one ``mean`` row per stream
    (:func:`summarize_regions`). No file is written over an input.

    Args:
        explainer: a :class:`SaliencyExplainer` on the bundle's network.
        dataset: ``monai.data.Dataset`` of manifest entries with the bundle's ``"infer"`` preprocessing.
        preprocessing: that (invertible) preprocessing, for ``Invertd``.
        output_dir: folder of all outputs.
        checkpoint: weights loaded into ``explainer.network`` before the run (``None``: as they are).
        reference_key: batch key of the T1 (the output grid).
        id_key: entry key of the session id (file names).
        image_keys: image keys shown in the PNG (RAS network grid).
        lesion_key, tissue_key: entry keys of the lesion mask and tissue labels (on the T1 grid).
        input_keys: entry keys of input files that must never be written over.

    Raises:
        ValueError: an output path that is an input file, a lesion/tissue map not on the T1 grid, a map that
            does not map back to the T1's shape.

    Examples:
        In ``explain.json``: ``"explaining": ["$@explain#runner.run()"]``.
    """

    def __init__(
        self,
        explainer: SaliencyExplainer,
        dataset: Any,
        preprocessing: Any,
        output_dir: str | Path,
        checkpoint: str | Path | None = None,
        reference_key: str = "t1",
        id_key: str = "session",
        image_keys: Sequence[str] = DEFAULT_MODALITIES,
        lesion_key: str = "lesion",
        tissue_key: str = "tissue",
        input_keys: Sequence[str] = IMAGE_KEYS,
    ) -> None:
        self.explainer, self.dataset, self.preprocessing = explainer, dataset, preprocessing
        self.output_dir = Path(output_dir)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.reference_key, self.id_key = reference_key, id_key
        self.image_keys = list(image_keys)
        self.lesion_key, self.tissue_key = lesion_key, tissue_key
        self.input_keys = list(input_keys)

    def load_checkpoint(self) -> None:
        """Load ``checkpoint`` (a state dict, or a dict with a ``"model"`` state dict) into the network."""
        if self.checkpoint is None:
            return
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: no trained model there; train the bundle first or pass its checkpoint")
        device = next(self.explainer.network.parameters()).device
        state = torch.load(self.checkpoint, map_location=device, weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        self.explainer.network.load_state_dict(state)

    def run(self) -> pd.DataFrame:
        """Explain every scan and write the outputs; returns the region table (with its mean rows)."""
        self.load_checkpoint()
        rows: list[dict[str, Any]] = []
        for index in range(len(self.dataset)):
            rows += self.explain_item(self.dataset[index])
        frame = summarize_regions(pd.DataFrame(rows))
        write_csv(frame, self.output_dir / f"regions_{self.explainer.method}.csv")
        for _, row in frame[frame["session"] == "mean"].iterrows():
            logger.info(
                f"{row['modality']}: mean {self.explainer.method} saliency in lesions {row['lesion_mean']:.4g}, "
                f"NAWM {row['nawm_mean']:.4g}, GM {row['gm_mean']:.4g}; lesion above NAWM in "
                f"{row['lesion_above_nawm']:.0%} of {int(row['n_sessions'])} sessions"
            )
        logger.info(f"wrote saliency maps of {len(self.dataset)} sessions to {self.output_dir}")
        return frame

    def _label_map(self, item: Mapping[str, Any], key: str, shape: tuple[int, ...], session: str) -> np.ndarray | None:
        import nibabel as nib

        value = item.get(key)
        if not isinstance(value, (str, Path)) or not str(value):
            return None
        data = np.asanyarray(nib.load(str(value)).dataobj)
        if data.shape[:3] != shape or data.size != int(np.prod(shape)):
            raise ValueError(f"session {session}: {key} map {value} has shape {data.shape}, the T1 {shape}; it must be on the T1 grid")
        return data.reshape(shape)

    def to_reference_space(self, saliency: torch.Tensor, item: Mapping[str, Any]) -> np.ndarray:
        """Map a network-grid map ``(1, *roi)`` back onto the original T1 grid: float32 ``(X, Y, Z)``."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        reference = item[self.reference_key]
        data = {self.reference_key: reference, "saliency": MetaTensor(saliency, meta=dict(reference.meta))}
        inverted = Invertd(keys="saliency", transform=self.preprocessing, orig_keys=self.reference_key, nearest_interp=False)(data)
        return to_numpy(inverted["saliency"])[0].astype(np.float32)

    def explain_item(self, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Write one scan's maps and picture; return its region rows (one per stream)."""
        import nibabel as nib

        session = str(item[self.id_key])
        t1_file = source_file(item[self.reference_key], self.reference_key, session)
        inputs = input_files(item, self.input_keys, session) | {Path(t1_file).resolve()}
        t1 = nib.load(t1_file)
        shape = tuple(t1.shape[:3])
        lesion = self._label_map(item, self.lesion_key, shape, session)
        tissue = self._label_map(item, self.tissue_key, shape, session)
        brain = np.asanyarray(t1.dataobj).reshape(shape) != 0 if tissue is None else None
        maps = self.explainer(item)
        method = self.explainer.method
        prediction = self.explainer.prediction
        rows, figure_rows = [], []
        for stream, saliency in maps.items():
            native = self.to_reference_space(saliency, item)
            if native.shape != shape:
                raise ValueError(f"session {session}: the {stream} map maps back to shape {native.shape}, not the T1's {shape} ({t1_file})")
            path = output_path(self.output_dir, f"{session}_{stream}_{method}.nii.gz", inputs, session)
            save_nifti(nifti_like(t1, native, np.float32), path)
            rows.append({"session": session, "modality": stream, "method": method, "prediction": prediction,
                         **region_saliency(native, lesion, tissue, brain), "saliency_file": str(path)})
            backgrounds = [stream] if stream in self.image_keys and stream in item else [k for k in self.image_keys if k in item]
            figure_rows += [(f"{stream} map on {key.upper()}", to_numpy(item[key])[0], saliency[0]) for key in backgrounds]
        png = output_path(self.output_dir, f"png/{session}_{method}.png", inputs, session)
        save_saliency_figure(figure_rows, png, title=f"{session}: {method}, prediction {prediction:.3g}")
        logger.info(f"{session}: {', '.join(maps)} {method} maps -> {self.output_dir}")
        return rows
