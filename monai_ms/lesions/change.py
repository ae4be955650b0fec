"""Lesion change between visits, per subject: pair sessions, register, match, classify, write, resume.

For every subject of a manifest with two or more sessions, consecutive sessions in date order form a
*pair* (baseline, follow-up). Per pair (:meth:`LesionChangePipeline.run_pair`):

1. read both T1s and both lesion masks: the manifest's ``lesion`` masks, or the masks a trained
   ``lesion_seg`` model wrote (``<masks_dir>/<session>_lesion_mask.nii.gz``, the bundle's
   ``inference.json``);
2. register the follow-up T1 rigidly onto the baseline T1 (:func:`~monai_ms.lesions.registration.rigid_register`;
   ``register=False`` is the naive baseline: the scanner worlds taken as aligned);
3. resample the follow-up mask onto the baseline grid (nearest neighbour: a linear resampling thresholded at
   0.5 erased lesions of one or two voxels and shrank the others, which read as resolved or shrinking
   lesions; measured in ``docs/lesion_change.md``), label both masks
   (:func:`~monai_ms.engines.metrics.segmentation.label_lesions`) and match them
   (:func:`~monai_ms.lesions.matching.match_lesions`);
4. optionally give each row its location class on the baseline
   (:func:`~monai_ms.lesions.location.atlas_on_scan`);
5. write, atomically, under ``output_dir``: ``pairs/<pair>_change.csv`` (one row per lesion group),
   ``pairs/<pair>_change_map.nii.gz`` (class codes in the baseline's native space), ``qc/<pair>_qc.png``
   (baseline and registered follow-up, new lesions outlined in red, enlarging in orange), then the
   pair's completion record ``records/<pair>.json``.

After all pairs: ``lesion_change.csv`` (one summary row per pair, plus one ``unpaired`` row per subject
with a single session and an error row per failed pair) and ``lesion_change_table.csv`` (every pair's
rows), each with its ``<table>.provenance.json`` (manifest SHA-256, splits, the masks' model, settings;
:func:`change_provenance`). Reruns skip pairs whose record says complete, exactly as
:class:`~monai_ms.engines.inference.batch.BatchInference` does for sessions (same inputs by path, size
and modification time; same settings; every file present); ``overwrite=True`` redoes all.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_ms.data.fields import SPLITS
from monai_ms.engines.handlers.report import write_sidecar
from monai_ms.engines.inference.batch import BatchInference
from monai_ms.io import nifti_like, save_figure, save_nifti, write_csv
from monai_ms.lesions.matching import CHANGE_CLASSES, CHANGE_COLUMNS, ENLARGING_RATIO, MATCH_OVERLAP, change_map, match_lesions

__all__ = ["PAIR_INPUT_KEYS", "pair_sessions", "manifest_entries", "change_provenance", "PairRecords", "LesionChangePipeline"]

logger = logging.getLogger(__name__)

PAIR_INPUT_KEYS = ("baseline_t1", "baseline_lesion", "followup_t1", "followup_lesion")


def _session_time(entry: Mapping[str, Any]) -> tuple[int, float]:
    """Sort key of a session: its scan date, else its age at scan; ValueError when it has neither."""
    value = entry.get("scan_date")
    if isinstance(value, str) and value.strip():
        try:
            return 0, float(datetime.date.fromisoformat(value.strip()[:10]).toordinal())
        except ValueError as error:
            raise ValueError(
                f"session {entry.get('session')}: scan_date must be a date YYYY-MM-DD, got {value!r}"
            ) from error
    age = entry.get("age")
    if isinstance(age, (int, float)) and np.isfinite(age):
        return 1, float(age)
    raise ValueError(
        f"session {entry.get('session')} of subject {entry.get('subject')}: needs scan_date (or age) to order "
        "the subject's sessions, got neither"
    )


def pair_sessions(
    entries: Sequence[Mapping[str, Any]], id_key: str = "session", subject_key: str = "subject"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Consecutive session pairs of each subject in date order, and the subjects with one session.

    Args:
        entries: manifest entries (``subject``, ``session``, ``t1``, ``lesion``, ``scan_date`` or ``age``).
        id_key: key of the session id.
        subject_key: key of the subject id.

    Returns:
        ``(pairs, unpaired)``: a pair is ``{"pair", "subject", "baseline", "followup", "interval_days"}``
        (``baseline``/``followup`` the entries; ``pair`` is ``<baseline>__<followup>``); an unpaired row is
        ``{"subject", "session", "status": "unpaired", "reason"}``. Subjects keep manifest order.

    Raises:
        ValueError: an entry without a subject or session id; a subject with several sessions and a
            session without a usable ``scan_date``/``age``; two sessions of a subject on one date.

    Examples:
        >>> pairs, unpaired = pair_sessions([
        ...     {"subject": "P1", "session": "b", "scan_date": "2021-05-01"},
        ...     {"subject": "P1", "session": "a", "scan_date": "2020-01-01"},
        ...     {"subject": "P2", "session": "c", "scan_date": "2020-01-01"}])
        >>> [p["pair"] for p in pairs], [u["subject"] for u in unpaired]
        (['a__b'], ['P2'])
    """
    by_subject: dict[str, list[Mapping[str, Any]]] = {}
    for index, entry in enumerate(entries):
        subject, session = entry.get(subject_key), entry.get(id_key)
        if not subject or not session:
            raise ValueError(f"entry {index}: needs '{subject_key}' and '{id_key}', got {subject!r} and {session!r}")
        by_subject.setdefault(str(subject), []).append(entry)
    pairs: list[dict[str, Any]] = []
    unpaired: list[dict[str, Any]] = []
    for subject, sessions in by_subject.items():
        if len(sessions) == 1:
            unpaired.append(
                {"subject": subject, "session": str(sessions[0][id_key]), "status": "unpaired", "reason": "one session"}
            )
            continue
        keyed = sorted(((_session_time(s), s) for s in sessions), key=lambda item: item[0])
        if len({kind for (kind, _), _ in keyed}) > 1:
            raise ValueError(f"subject {subject}: some sessions have a scan_date and others only an age; give every session a scan_date")
        for (first_key, first), (second_key, second) in zip(keyed, keyed[1:]):
            if first_key == second_key:
                raise ValueError(
                    f"subject {subject}: sessions {first[id_key]} and {second[id_key]} have the same date; cannot order them"
                )
            interval = second_key[1] - first_key[1]
            pairs.append(
                {
                    "pair": f"{first[id_key]}__{second[id_key]}",
                    "subject": subject,
                    "baseline": dict(first),
                    "followup": dict(second),
                    "interval_days": round(interval if first_key[0] == 0 else interval * 365.25, 1),
                }
            )
    return pairs, unpaired


def manifest_entries(manifest: str | os.PathLike, splits: Sequence[str] = SPLITS) -> list[dict]:
    """Every entry of the named splits (absolute paths; files checked to exist, voxels not read).

    Raises:
        monai_ms.data.ManifestError: the manifest's problems, one per line.
    """
    from monai_ms.data.manifest import load_datalist, read_manifest

    present = read_manifest(manifest)
    entries: list[dict] = []
    for split in splits:
        if present.get(split):
            entries += load_datalist(manifest, split, validate=True, check_voxels=False)
    return entries


def change_provenance(
    manifest: str | os.PathLike, splits: Sequence[str] = SPLITS, masks_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Where a change analysis comes from: the manifest (path and SHA-256), its splits and the masks' source.

    Args:
        manifest: the manifest the entries were read from.
        splits: the splits read.
        masks_dir: the folder of a trained ``lesion_seg`` model's masks, or None (the manifest's masks). When it
            holds that inference's ``lesions.provenance.json``, its record (the model's checkpoint SHA-256, the
            manifest and split it was run on) is kept as ``mask_model``.

    Returns:
        ``{"analysis", "manifest", "manifest_sha256", "splits", "masks", "mask_model", "monai_ms_version",
        "created_utc"}``, written by :class:`LesionChangePipeline` beside both tables as
        ``<table>.provenance.json``.

    Raises:
        FileNotFoundError: the manifest does not exist.
    """
    import json

    from monai_ms import __version__
    from monai_ms.io import sha256_file

    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the manifest does not exist")
    mask_model = None
    if masks_dir not in (None, ""):
        sidecar = Path(str(masks_dir)) / "lesions.provenance.json"
        if sidecar.is_file():
            mask_model = json.loads(sidecar.read_text()).get("provenance")
    return {
        "analysis": "lesion_change",
        "manifest": str(path.resolve()),
        "manifest_sha256": sha256_file(path),
        "splits": list(splits),
        "masks": "manifest" if masks_dir in (None, "") else str(Path(str(masks_dir)).resolve()),
        "mask_model": mask_model,
        "monai_ms_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class PairRecords(BatchInference):
    """:class:`~monai_ms.engines.inference.batch.BatchInference` records keyed by pair: the same resume
    rule, with a pair's four input files (both T1s and both masks) in place of a session's images."""

    input_keys = tuple(PAIR_INPUT_KEYS)


class LesionChangePipeline:
    """Lesion change of every session pair of a cohort (module docstring: steps and files).

    Args:
        entries: manifest entries (e.g. :func:`manifest_entries`).
        output_dir: folder of all outputs.
        masks_dir: folder of ``<session>_lesion_mask.nii.gz`` from a trained ``lesion_seg`` model; None
            reads the manifest's ``lesion`` masks.
        register: rigid registration of each follow-up (False: the naive baseline, scanner worlds).
        location: add the location class of each lesion group (one affine atlas registration per pair).
        overlap, enlarging_ratio, min_change_mm3: the matching rule (:mod:`monai_ms.lesions.matching`).
        min_volume_mm3: smaller components are not lesions (:func:`~monai_ms.engines.metrics.segmentation.label_lesions`).
        qc: write the QC picture of each pair.
        overwrite: redo finished pairs.
        seed: registration sampling seed.
        threads: SimpleITK threads (default: all cores).
        progress: show a progress bar over the pairs.
        mask_resampling: ``"nearest"`` (default) or ``"linear"`` (then ``>= 0.5``) for the follow-up mask.
        provenance: where the entries come from (:func:`change_provenance`); written, with the settings, beside
            ``lesion_change.csv`` and ``lesion_change_table.csv`` as ``<table>.provenance.json`` (None: the
            source is recorded as unknown).

    Raises:
        ValueError: see :func:`pair_sessions`; an entry lacks ``t1``, or ``lesion`` when ``masks_dir`` is None.

    Examples:
        >>> pipeline = LesionChangePipeline(manifest_entries("manifest.json"), "out/change")  # doctest: +SKIP
        >>> summary = pipeline.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        entries: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        masks_dir: str | os.PathLike | None = None,
        register: bool = True,
        location: bool = True,
        overlap: float = MATCH_OVERLAP,
        enlarging_ratio: float = ENLARGING_RATIO,
        min_change_mm3: float | None = None,
        min_volume_mm3: float | None = None,
        qc: bool = True,
        overwrite: bool = False,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = True,
        mask_resampling: str = "nearest",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        from monai_ms.engines.metrics.segmentation import MIN_LESION_MM3

        self.output_dir = Path(output_dir)
        self.masks_dir = None if masks_dir in (None, "") else Path(masks_dir)
        self.register, self.location, self.qc = bool(register), bool(location), bool(qc)
        self.overlap, self.enlarging_ratio, self.min_change_mm3 = float(overlap), float(enlarging_ratio), min_change_mm3
        self.min_volume_mm3 = MIN_LESION_MM3 if min_volume_mm3 is None else float(min_volume_mm3)
        self.seed, self.threads, self.progress = int(seed), threads, progress
        if mask_resampling not in ("nearest", "linear"):
            raise ValueError(f"mask_resampling must be 'nearest' or 'linear', got {mask_resampling!r}")
        self.mask_resampling = mask_resampling
        self.mask_order = 0 if mask_resampling == "nearest" else 1
        self.pairs, self.unpaired = pair_sessions(entries)
        for pair in self.pairs:
            for role in ("baseline", "followup"):
                entry = pair[role]
                if not entry.get("t1"):
                    raise ValueError(f"session {entry['session']}: has no t1; the change pipeline registers the T1s")
                if self.masks_dir is None and not entry.get("lesion"):
                    raise ValueError(
                        f"session {entry['session']}: has no lesion mask in the manifest; give masks_dir (the masks "
                        "of a trained lesion_seg model) or add the masks"
                    )
        settings = {
            "register": self.register,
            "location": self.location,
            "overlap": self.overlap,
            "enlarging_ratio": self.enlarging_ratio,
            "min_change_mm3": self.min_change_mm3,
            "min_volume_mm3": self.min_volume_mm3,
            "masks": "manifest" if self.masks_dir is None else str(self.masks_dir.resolve()),
            "seed": self.seed,
            "mask_resampling": self.mask_resampling,
        }
        self.provenance = {
            **(dict(provenance) if provenance is not None else {"analysis": "lesion_change", "manifest": None}),
            "settings": settings,
        }
        self.records = PairRecords(
            [self._record_entry(pair) for pair in self.pairs],
            self.output_dir / "records",
            overwrite=overwrite,
            settings=settings,
            id_key="pair",
            progress=False,
        )
        self.records.register_table_writer(self.write_tables)
        self._by_pair = {pair["pair"]: pair for pair in self.pairs}

    def mask_path(self, entry: Mapping[str, Any]) -> str:
        """The lesion mask file of a session (the manifest's, or the trained model's under ``masks_dir``)."""
        if self.masks_dir is None:
            return str(entry["lesion"])
        return str(self.masks_dir / f"{entry['session']}_lesion_mask.nii.gz")

    def _record_entry(self, pair: Mapping[str, Any]) -> dict[str, Any]:
        b, f = pair["baseline"], pair["followup"]
        return {
            "pair": pair["pair"],
            "baseline_t1": b["t1"],
            "baseline_lesion": self.mask_path(b),
            "followup_t1": f["t1"],
            "followup_lesion": self.mask_path(f),
        }

    # ------------------------------------------------------------------ one pair
    def run_pair(self, pair: Mapping[str, Any]) -> dict[str, Any]:
        """Compute and write one pair's outputs, then its completion record; returns its summary row.

        Raises:
            ValueError / OSError: an unreadable input (the caller records the pair as failed).
        """
        import nibabel as nib

        from monai_ms.engines.metrics.segmentation import label_lesions
        from monai_ms.lesions.registration import Registration, resample_to, rigid_register

        start = time.perf_counter()
        name = pair["pair"]
        self.records.record_path(name).unlink(missing_ok=True)  # an old record must not vouch for new files
        b_entry, f_entry = pair["baseline"], pair["followup"]
        b_t1, f_t1 = nib.load(str(b_entry["t1"])), nib.load(str(f_entry["t1"]))
        b_mask = self._mask_on(self.mask_path(b_entry), b_t1)
        f_mask = self._mask_on(self.mask_path(f_entry), f_t1)
        if self.register:
            registration = rigid_register(b_t1, f_t1, seed=self.seed, threads=self.threads)
        else:
            registration = Registration.identity()
        f_on_b = resample_to(f_mask.astype(np.uint8), f_t1.affine, b_t1, registration.matrix, order=self.mask_order)
        f_on_b = f_on_b > 0 if self.mask_order == 0 else f_on_b >= 0.5  # linear: a voxel at least half lesion
        spacing = np.sqrt((np.asarray(b_t1.affine)[:3, :3] ** 2).sum(axis=0))
        b_labels, _ = label_lesions(b_mask, spacing, self.min_volume_mm3)
        f_labels, _ = label_lesions(f_on_b, spacing, self.min_volume_mm3)
        table = match_lesions(b_labels, f_labels, b_t1.affine, self.overlap, self.enlarging_ratio, self.min_change_mm3)
        location_seconds = 0.0
        if self.location:
            location_start = time.perf_counter()
            table = self._add_location(table, b_labels, f_labels, b_t1)
            location_seconds = time.perf_counter() - location_start
        table.insert(0, "pair", name)
        table.insert(1, "subject", pair["subject"])

        pairs_dir = self.output_dir / "pairs"
        table_path = write_csv(table, pairs_dir / f"{name}_change.csv")
        codes = change_map(b_labels, f_labels, table)
        map_path = save_nifti(nifti_like(b_t1, codes, np.uint8), pairs_dir / f"{name}_change_map.nii.gz")
        files = [table_path, map_path]
        if self.qc:
            f_image = resample_to(f_t1.get_fdata(dtype=np.float32), f_t1.affine, b_t1, registration.matrix, order=1)
            counts_for_title = {cls: int((table["change"] == cls).sum()) for cls in ("new", "enlarging")}
            files.append(self._qc(name, b_t1.get_fdata(dtype=np.float32), f_image, codes, counts_for_title))
        counts = {f"n_{cls}": int((table["change"] == cls).sum()) for cls in CHANGE_CLASSES}
        row = {
            "pair": name,
            "subject": pair["subject"],
            "status": "ok",
            "baseline": str(b_entry["session"]),
            "followup": str(f_entry["session"]),
            "interval_days": pair["interval_days"],
            "n_new_or_enlarging": int(table["new_or_enlarging"].sum()),
            **counts,
            "baseline_lesion_ml": round(float(b_mask.sum()) * float(np.prod(spacing)) / 1000.0, 4),
            "followup_lesion_ml": round(float(f_on_b.sum()) * float(np.prod(spacing)) / 1000.0, 4),
            "registration": registration.kind,
            "rotation_deg": round(registration.rotation_deg, 3),
            "translation_mm": round(registration.translation_mm, 3),
            "registration_metric": round(registration.metric, 5) if np.isfinite(registration.metric) else None,
            "registration_seconds": round(registration.seconds, 2),
            "location_seconds": round(location_seconds, 2),
            "seconds": round(time.perf_counter() - start, 2),
            "change_table": str(table_path),
            "change_map": str(map_path),
            "qc_file": str(files[2]) if self.qc else "",
        }
        self.records.complete(name, row, files=files, tables={"lesions": table.to_dict("records")})
        logger.info(
            f"{name}: {row['n_new_or_enlarging']} new or enlarging ({row['n_new']} new), {len(table)} groups, "
            f"{row['seconds']:.1f} s"
        )
        return row

    @staticmethod
    def _mask_on(path: str, t1: Any) -> np.ndarray:
        """The mask as bool on the T1's grid (resampled through the worlds when it is on another grid)."""
        import nibabel as nib

        from monai_ms.lesions.registration import resample_to

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: lesion mask not found")
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path}: lesion mask must be 3D, got shape {data.shape}")
        binary = data > 0.5 if data.dtype.kind == "f" else data > 0
        if data.shape == t1.shape[:3] and np.allclose(image.affine, t1.affine, atol=1e-3):
            return binary
        return resample_to(binary.astype(np.float32), image.affine, t1, order=1) >= 0.5

    def _add_location(self, table: pd.DataFrame, b_labels: np.ndarray, f_labels: np.ndarray, t1: Any) -> pd.DataFrame:
        from monai_ms.lesions.location import LOCATION_COLUMNS, atlas_on_scan, lesion_locations

        maps, _ = atlas_on_scan(t1, seed=self.seed)
        groups = change_map(b_labels, f_labels, table, ids=True)
        located = lesion_locations(groups, len(table), maps).drop(columns="lesion_label")
        return pd.concat([table.reset_index(drop=True), located[LOCATION_COLUMNS].reset_index(drop=True)], axis=1)

    def _qc(
        self, name: str, baseline: np.ndarray, followup: np.ndarray, codes: np.ndarray, counts: Mapping[str, int]
    ) -> Path:
        """Baseline T1 | registered follow-up T1, axial slices with the most new/enlarging voxels."""
        from matplotlib.figure import Figure

        from monai_ms.lesions.matching import CHANGE_CODES

        new = codes == CHANGE_CODES["new"]
        enlarging = codes == CHANGE_CODES["enlarging"]
        marked = new | enlarging
        lesions = codes > 0
        per_slice = (marked if marked.any() else lesions).sum(axis=(0, 1))
        if per_slice.any():
            chunks = np.array_split(np.flatnonzero(per_slice), min(4, int(np.count_nonzero(per_slice))))
            slices = [int(chunk[np.argmax(per_slice[chunk])]) for chunk in chunks]
        else:
            occupied = np.flatnonzero(baseline.sum(axis=(0, 1)) > 0)
            lo, hi = (occupied[0], occupied[-1]) if occupied.size else (0, baseline.shape[2] - 1)
            slices = np.linspace(lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo), 4).round().astype(int).tolist()
        figure = Figure(figsize=(2.6 * len(slices), 5.8), layout="constrained")
        axes = figure.subplots(2, len(slices), squeeze=False)
        for row, (title, image) in enumerate((("baseline", baseline), ("follow-up (registered)", followup))):
            brain = image[image > 0]
            low, high = np.percentile(brain, (1, 99)) if brain.size else (0.0, 1.0)
            for col, k in enumerate(slices):
                ax = axes[row, col]
                ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
                for mask, colour in ((lesions & ~marked, "deepskyblue"), (enlarging, "orange"), (new, "red")):
                    if mask[:, :, k].any():
                        ax.contour(mask[:, :, k].T.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
                ax.set_axis_off()
                ax.set_title(f"{title} z={k}", fontsize=8)
        figure.suptitle(
            f"{name}: new {counts['new']} (red), enlarging {counts['enlarging']} (orange), "
            "other lesions blue; axial, RAS",
            fontsize=9,
        )
        return save_figure(figure, self.output_dir / "qc" / f"{name}_qc.png")

    # ------------------------------------------------------------------ the cohort
    def run(self) -> pd.DataFrame:
        """Run every pending pair (a failed pair gets an error row; the others go on), then write the tables.

        Returns:
            the cohort summary (``lesion_change.csv``).

        Raises:
            monai_ms.engines.BatchInferenceError: some pairs failed (their messages, one per line); the
                tables are written first.
        """
        pending = self.records.pending()
        if self.unpaired:
            logger.warning(
                f"{len(self.unpaired)} subjects have one session and are reported as unpaired: "
                + ", ".join(u["subject"] for u in self.unpaired[:20])
                + (" ..." if len(self.unpaired) > 20 else "")
            )
        iterator: Any = pending
        if self.progress and pending:
            from tqdm import tqdm

            iterator = tqdm(pending, desc="lesion change", unit="pair")
        for entry in iterator:
            pair = self._by_pair[entry["pair"]]
            try:
                self.run_pair(pair)
            except (OSError, ValueError, RuntimeError, EOFError) as error:
                logger.debug("pair failed", exc_info=True)
                self.records.fail(pair["pair"], f"{type(error).__name__}: {error}")
        self.records.finish()
        return self.summary()

    def summary(self) -> pd.DataFrame:
        """``lesion_change.csv``: pairs with a record (ok or error) then the unpaired subjects."""
        frame = self.records.table()
        if "status" not in frame.columns and len(frame):
            frame.insert(1, "status", "failed")
        elif "error" in frame.columns:
            frame.loc[frame["error"].notna() & (frame["error"] != ""), "status"] = "failed"
        unpaired = pd.DataFrame(self.unpaired, columns=["subject", "session", "status", "reason"])
        if len(unpaired):
            unpaired = unpaired.rename(columns={"session": "baseline"})
            frame = pd.concat([frame, unpaired], ignore_index=True) if len(frame) else unpaired
        counts = [c for c in frame.columns if c.startswith("n_")]
        return frame.astype({c: "Int64" for c in counts})  # counts stay integers beside unpaired rows

    def write_tables(self) -> Path:
        """Write ``lesion_change.csv`` and ``lesion_change_table.csv`` from the records; returns the first."""
        summary = self.summary()
        path = write_csv(summary, self.output_dir / "lesion_change.csv")
        rows = self.records.part("lesions")
        columns = ["pair", "subject", *CHANGE_COLUMNS]
        lesions = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
        table = write_csv(lesions, self.output_dir / "lesion_change_table.csv")
        write_sidecar(path, self.provenance, summary.columns, len(summary))
        write_sidecar(table, self.provenance, lesions.columns, len(lesions))
        return path

