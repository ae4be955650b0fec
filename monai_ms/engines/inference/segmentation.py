"""Lesion segmentation inference: flip TTA, post-processing, the mask / lesion-table writer, the QC picture.

Lesion-wise rules and metrics: :mod:`monai_ms.engines.metrics.segmentation`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer

from monai_ms.data.fields import DEFAULT_MODALITIES, IMAGE_KEYS
from monai_ms.engines.handlers.common import decollated_items, source_file, to_numpy
from monai_ms.engines.handlers.report import write_sidecar
from monai_ms.engines.metrics.segmentation import CONNECTIVITY, MIN_LESION_MM3, binary_mask, lesion_table
from monai_ms.io import nifti_like, save_figure, save_nifti, write_csv

__all__ = [
    "save_qc_figure",
    "FlipTTAInferer",
    "lesion_postprocessing",
    "input_files",
    "output_path",
    "LesionMaskWriter",
]

logger = logging.getLogger(__name__)


def save_qc_figure(
    images: Mapping[str, Any],
    mask: Any,
    path: str | Path,
    title: str = "",
    n_slices: int = 4,
) -> Path:
    """A QC picture: axial slices of each image with the mask outlined in red.

    The slices are those with the most mask voxels (spread over the lesion-bearing range), or evenly
    spaced through the brain when the mask is empty. Arrays are shown in the orientation given: pass RAS
    arrays (as the bundle's transforms make them) for axial slices with anterior up and the subject's
    left on the left.

    Args:
        images: name -> 3D array ``(X, Y, Z)`` (e.g. ``{"T1": t1, "T2": t2}``), all on the mask's grid.
        mask: binary mask ``(X, Y, Z)``.
        path: PNG to write (atomically).
        title: figure title (the session).
        n_slices: slices per image.

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask_b = binary_mask(mask, "mask")
    arrays = {name: np.asarray(to_numpy(image)).reshape(mask_b.shape) for name, image in images.items()}
    per_slice = mask_b.sum(axis=(0, 1))
    if per_slice.any():
        lesion_slices = np.flatnonzero(per_slice)
        # the busiest slice of each of n_slices equal chunks of the lesion-bearing range
        chunks = np.array_split(lesion_slices, min(n_slices, lesion_slices.size))
        slices = [int(chunk[np.argmax(per_slice[chunk])]) for chunk in chunks]
    else:
        first = next(iter(arrays.values()))
        occupied = np.flatnonzero(np.abs(first).sum(axis=(0, 1)) > 0)
        lo, hi = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, mask_b.shape[2] - 1)
        slices = np.linspace(lo + (hi - lo) * 0.25, lo + (hi - lo) * 0.75, n_slices).round().astype(int).tolist()
    fig, axes = plt.subplots(len(arrays), len(slices), figsize=(2.6 * len(slices), 2.8 * len(arrays)), squeeze=False)
    for row, (name, array) in enumerate(arrays.items()):
        brain = array[array != 0]
        low, high = np.percentile(brain, (1, 99)) if brain.size else (0.0, 1.0)
        for col, k in enumerate(slices):
            ax = axes[row, col]
            ax.imshow(array[:, :, k].T, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
            if mask_b[:, :, k].any():
                ax.contour(mask_b[:, :, k].T.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"{name} z={k}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    written = save_figure(fig, path)
    plt.close(fig)
    return written


class FlipTTAInferer(Inferer):
    """Flip test-time augmentation around another inferer: the mean of the logits over flipped copies.

    The wrapped inferer (e.g. ``SlidingWindowInferer``) runs on the input and on each flipped copy; each
    output is flipped back and the logits are averaged (one sigmoid is applied afterwards, in
    post-processing). With no flips it is the wrapped inferer.

    Args:
        inferer: the inferer to wrap.
        flip_axes: one entry per extra pass, each a sequence of spatial axes to flip (0 = the first spatial
            axis, left-right in RAS); ``[[0], [1], [2]]`` runs four passes.

    Examples:
        >>> from monai.inferers import SimpleInferer
        >>> tta = FlipTTAInferer(SimpleInferer(), flip_axes=[[0]])
        >>> tta(torch.arange(8.0).reshape(1, 1, 2, 2, 2), lambda x: x).shape  # identity network
        torch.Size([1, 1, 2, 2, 2])
    """

    def __init__(self, inferer: Inferer, flip_axes: Sequence[Sequence[int]] = ((0,),)) -> None:
        super().__init__()
        self.inferer = inferer
        self.flip_axes = [tuple(int(a) for a in axes) for axes in flip_axes]
        for axes in self.flip_axes:
            if not axes or any(a < 0 for a in axes):
                raise ValueError(f"each flip_axes entry must list spatial axes >= 0, got {list(flip_axes)!r}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.inferer(inputs, network, *args, **kwargs)
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]  # (B, C, spatial...)
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            output = output + torch.flip(flipped, dims)
        return output / (1 + len(self.flip_axes))


def lesion_postprocessing(
    preprocessing: Any,
    threshold: float = 0.5,
    pred_key: str = "pred",
    orig_key: str = "t1",
    prob_key: str | None = None,
    grid_key: str | None = None,
) -> Any:
    """Post-processing of a lesion segmenter's logits back to each scan's original T1 grid.

    sigmoid -> (optional copy on the network grid, thresholded, for QC) -> ``Invertd`` of the spatial
    preprocessing (probabilities interpolated linearly, so the mask is thresholded after the mapping, at
    the T1's own resolution) -> (optional copy of the probabilities) -> threshold.

    Args:
        preprocessing: the (invertible) transform chain that produced the network input.
        threshold: probability above which a voxel is lesion.
        pred_key: output key of the logits; becomes the binary mask on the original T1 grid.
        orig_key: batch key whose applied transforms are inverted (the T1).
        prob_key: also keep the probabilities on the original grid under this key.
        grid_key: also keep the binary mask on the network grid under this key.

    Returns:
        a ``monai.transforms.Compose`` for an evaluator's ``postprocessing`` (``decollate=True``).

    Examples:
        In a config: ``"postprocessing": "$monai_ms.engines.lesion_postprocessing(@infer#preprocessing,
        @threshold, prob_key='prob', grid_key='pred_grid')"``.
    """
    from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd, Invertd

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
    chain: list[Any] = [Activationsd(keys=pred_key, sigmoid=True)]
    if grid_key is not None:
        chain += [CopyItemsd(keys=pred_key, names=grid_key), AsDiscreted(keys=grid_key, threshold=threshold)]
    chain.append(Invertd(keys=pred_key, transform=preprocessing, orig_keys=orig_key, nearest_interp=False))
    if prob_key is not None:
        chain.append(CopyItemsd(keys=pred_key, names=prob_key))
    chain.append(AsDiscreted(keys=pred_key, threshold=threshold))
    return Compose(chain)


def input_files(item: Mapping[str, Any], keys: Sequence[str], session: str) -> set[Path]:
    """Resolved paths of a scan's input files (manifest paths or the source files of loaded images)."""
    files = set()
    for key in keys:
        value = item.get(key)
        if isinstance(value, (str, Path)):  # a manifest path that was not loaded
            files.add(Path(value).resolve())
        elif getattr(value, "meta", None) is not None:
            files.add(Path(source_file(value, key, session)).resolve())
    return files


def output_path(output_dir: Path, name: str, inputs: set[Path], session: str) -> Path:
    """``output_dir / name``, refused when it is one of the scan's input files (never write over inputs)."""
    path = Path(output_dir) / name
    if path.resolve() in inputs:
        raise ValueError(f"session {session}: refusing to write {path}: it is one of the scan's input files")
    return path


class LesionMaskWriter:
    """Write each scan's lesion mask (and probability map) on its original T1 grid, lesion tables and QC PNGs.

    Attach to a decollated ``SupervisedEvaluator`` whose post-processing maps the prediction back onto the
    original T1 grid (``Invertd``). Per scan, under ``output_dir``:

    - ``<session>_lesion_mask.nii.gz``: uint8 0/1, with the input T1's shape, affine and orientation;
    - ``<session>_lesion_prob.nii.gz``: float32 probabilities (when ``prob_key`` is given);
    - ``qc/<session>_qc.png``: T1/T2 axial slices with the mask outlined (network grid, RAS).

    After the run: ``lesions.csv`` (one row per scan: lesion count, total volume in mL, files) and
    ``lesion_table.csv`` (one row per lesion: volume in mL and centroid in world mm, see
    :func:`lesion_table`). No file is ever written over an input image. Bound to a
    :class:`monai_ms.engines.BatchInference` (its ``writers``), each scan instead leaves a completion record
    and both tables are assembled from the records of the whole split by ``batch.finish()``.

    Args:
        output_dir: folder of all outputs.
        mask_key: output key of the binary mask on the original T1 grid, ``(1, *t1_shape)``.
        prob_key: output key of the probability map on that grid, or ``None`` (no probability file).
        reference_key: batch key of the T1 (its source file gives the grid and header).
        id_key: batch key of the session id (file names).
        qc_keys: batch keys of the images shown in the QC picture (network grid), or empty for none.
        qc_mask_key: output key of the mask or probability on the network grid (for the QC picture).
        min_volume_mm3, connectivity: lesion rules for counting (the mask file keeps every voxel).
        model_version: recorded in ``lesions.csv``.
        input_keys: batch keys of the scan's input files (loaded images or manifest paths), which are
            never written over.
        location: give every lesion of ``lesion_table.csv`` its McDonald location class and its distances
            to the ventricles and the cortex, from the CerebrA atlas registered affinely to the scan's T1
            (:func:`monai_ms.lesions.location.atlas_on_scan`; about 10-20 s per scan on 2 CPU cores).
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance`` of the inferred split, the
            manifest and the checkpoint), written beside both tables as ``<table>.provenance.json``
            (:func:`monai_ms.engines.handlers.report.write_sidecar`); ``None`` writes no sidecar.

    Raises:
        ValueError: an output path that is one of the scan's input files, or a mask whose shape differs
            from the input T1's.

    Examples:
        In ``inference.json``, after ``CheckpointLoader`` in ``infer#handlers``::

            {"_target_": "monai_ms.engines.LesionMaskWriter", "output_dir": "@inference_dir",
             "model_version": "$@_meta_#version"}
    """

    def __init__(
        self,
        output_dir: str | Path,
        mask_key: str = "pred",
        prob_key: str | None = "prob",
        reference_key: str = "t1",
        id_key: str = "session",
        qc_keys: Sequence[str] = DEFAULT_MODALITIES,
        qc_mask_key: str | None = "pred_grid",
        min_volume_mm3: float = MIN_LESION_MM3,
        connectivity: int = CONNECTIVITY,
        model_version: str = "",
        input_keys: Sequence[str] = IMAGE_KEYS,
        location: bool = False,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.location = bool(location)
        self.provenance = provenance
        self.mask_key, self.prob_key, self.reference_key, self.id_key = mask_key, prob_key, reference_key, id_key
        self.qc_keys, self.qc_mask_key = list(qc_keys), qc_mask_key
        self.min_volume_mm3, self.connectivity = float(min_volume_mm3), int(connectivity)
        self.model_version = model_version
        self.input_keys = list(input_keys)
        self.scans: list[dict[str, Any]] = []
        self.lesions: list[pd.DataFrame] = []
        self.batch: Any = None

    def bind(self, batch: Any) -> None:
        """Write per-session completion records through a ``monai_ms.engines.BatchInference`` instead of
        keeping the rows in memory; the tables are then assembled from the records by ``batch.finish()``,
        and a scan this writer refuses (a ``ValueError``) becomes a failed session instead of stopping the run."""
        self.batch = batch
        batch.register_table_writer(self.write_tables)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        if self.batch is None:
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.scans, self.lesions = [], []

    def collect(self, engine: Engine) -> None:
        if engine.state.batch is None:  # every scan of this iteration failed before the network
            return
        for batch, output in decollated_items(engine):
            if self.batch is None:
                self.write_scan(batch, output)
                continue
            session = str(batch[self.id_key])
            try:
                row, table = self._write_files(batch, output)
            except ValueError as error:  # this scan's own problem (e.g. an output path that is an input)
                self.batch.fail(session, str(error))
                continue
            files = [row[key] for key in ("mask_file", "prob_file", "qc_file") if key in row]
            self.batch.complete(session, row, files=files, tables={"lesions": table.to_dict("records")})

    def write_scan(self, batch: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
        """Write one scan's files and record its rows; ``batch``/``output`` are one decollated item each."""
        row, table = self._write_files(batch, output)
        self.scans.append(row)
        self.lesions.append(table)
        return row

    def _write_files(self, batch: Mapping[str, Any], output: Mapping[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
        """Write one scan's mask, probability and QC files; return its ``lesions.csv`` row and lesion table."""
        import nibabel as nib

        session = str(batch[self.id_key])
        t1_file = source_file(batch[self.reference_key], self.reference_key, session)
        inputs = input_files(batch, self.input_keys, session) | {Path(t1_file).resolve()}
        t1 = nib.load(t1_file)
        mask = binary_mask(to_numpy(output[self.mask_key]), "mask")
        if mask.shape != t1.shape[:3]:
            raise ValueError(f"session {session}: mask of shape {mask.shape} does not match the input T1 {t1_file} of shape {t1.shape}")
        mask_path = output_path(self.output_dir, f"{session}_lesion_mask.nii.gz", inputs, session)
        save_nifti(nifti_like(t1, mask.astype(np.uint8), np.uint8), mask_path)
        row: dict[str, Any] = {"session": session}
        maps = None
        if self.location and mask.any():
            from monai_ms.lesions.location import atlas_on_scan

            maps, _ = atlas_on_scan(t1)
        table = lesion_table(mask, t1.affine, session, self.min_volume_mm3, self.connectivity, location=maps)
        row["lesion_count"] = len(table)
        row["total_volume_ml"] = float(mask.sum()) * float(np.prod(t1.header.get_zooms()[:3])) / 1000.0
        row["mask_file"] = str(mask_path)
        if self.prob_key is not None:
            prob = to_numpy(output[self.prob_key]).reshape(mask.shape).astype(np.float32)
            prob_path = output_path(self.output_dir, f"{session}_lesion_prob.nii.gz", inputs, session)
            save_nifti(nifti_like(t1, np.clip(prob, 0.0, 1.0), np.float32), prob_path)
            row["prob_file"] = str(prob_path)
        if self.qc_keys and self.qc_mask_key is not None:
            qc_path = output_path(self.output_dir, f"qc/{session}_qc.png", inputs, session)
            images = {key.upper(): to_numpy(batch[key])[0] for key in self.qc_keys if key in batch}
            qc_mask = to_numpy(output[self.qc_mask_key])[0] > 0.5
            save_qc_figure(images, qc_mask, qc_path, title=f"{session}: {len(table)} lesions, {row['total_volume_ml']:.2f} mL")
            row["qc_file"] = str(qc_path)
        row["t1_file"] = t1_file
        row["model_version"] = self.model_version
        logger.info(f"{session}: {len(table)} lesions, {row['total_volume_ml']:.2f} mL -> {mask_path}")
        return row, table

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write ``lesions.csv`` and ``lesion_table.csv`` of the scans written in this run."""
        tables = [t for t in self.lesions if len(t)]
        return self._write_tables(pd.DataFrame(self.scans), pd.concat(tables, ignore_index=True) if tables else None)

    def write_tables(self) -> Path:
        """Bound to a ``BatchInference``: write both tables from the records of every session of the split
        (failed sessions: a ``lesions.csv`` row with their ``error``); returns the path of ``lesions.csv``."""
        lesions = self.batch.part("lesions")
        self._write_tables(self.batch.table(), pd.DataFrame(lesions) if lesions else None)
        return self.output_dir / "lesions.csv"

    def _write_tables(self, scans: pd.DataFrame, lesions: pd.DataFrame | None) -> pd.DataFrame:
        columns = ["session", "lesion_id", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
        if self.location:
            from monai_ms.lesions.location import LOCATION_COLUMNS

            columns += list(LOCATION_COLUMNS)
        table = lesions[columns] if lesions is not None else pd.DataFrame(columns=columns)
        write_csv(scans, self.output_dir / "lesions.csv")
        write_csv(table, self.output_dir / "lesion_table.csv")
        if self.provenance is not None:
            write_sidecar(self.output_dir / "lesions.csv", self.provenance, scans.columns, len(scans))
            write_sidecar(self.output_dir / "lesion_table.csv", self.provenance, table.columns, len(table))
        logger.info(f"wrote masks and lesion tables of {len(scans)} scans to {self.output_dir}")
        return scans
