"""The data side of a bundle run: the built-in demo cohort and the pre-training cohort check."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai_ms.errors import stop_or_raise

__all__ = ["DEMO_SUBJECTS", "DEMO_SPACING", "demo_manifest", "demo_manifest_path", "validate_cohort"]

logger = logging.getLogger(__name__)

DEMO_SUBJECTS = 60
DEMO_SPACING = 2.0
DEMO_SEED = 0


def demo_manifest_path(dataset_dir: str | os.PathLike, flair: bool = False) -> Path:
    """Where :func:`demo_manifest` keeps the current generator version's manifest (it may not exist yet)."""
    from monai_ms.data.synthetic import GENERATOR_VERSION

    return Path(dataset_dir) / f"v{GENERATOR_VERSION}" / ("manifest_flair.json" if flair else "manifest.json")


def demo_manifest(
    dataset_dir: str | os.PathLike,
    subjects: int = DEMO_SUBJECTS,
    spacing: float | None = DEMO_SPACING,
    seed: int = DEMO_SEED,
    tiny: bool = False,
    flair: bool = False,
) -> str:
    """Path of the built-in demo cohort's manifest, generating the cohort on first use.

    The cohort is the synthetic one of ``monai-ms synth`` (seed layout) with a subject-level
    stratified 70/15/15 split. Generation takes about a minute; a file lock lets two bundles started
    together share one generation, and the cohort is renamed into place only when complete. Each
    generator version gets its own folder (``v2/``, ...), so a newer monai_ms never trains on a cohort
    cached by an older one; older folders are left in place (delete them to free space).

    Args:
        dataset_dir: folder of the demo data (git-ignored ``demo_data/`` at the repository root).
        subjects: number of synthetic patients.
        spacing: voxel size of the generated T1 in mm (``None``: the generator's default).
        seed: random seed of the cohort and the split.
        tiny: the generator's fast test mode (coarse voxels), for tests.
        flair: the same cohort with a FLAIR per session as well (``monai-ms synth --modalities t1,t2,flair``:
            the T1, T2, masks and split are identical), in ``cohort_flair/`` with ``manifest_flair.json``; what a
            bundle uses without ``--data_manifest`` when its ``modalities`` include ``flair``.

    Returns:
        path of ``<dataset_dir>/v<generator version>/manifest.json`` (``manifest_flair.json``).
    """
    from monai_ms.data.manifest import build_from_csv, write_manifest
    from monai_ms.data.split import split_entries
    from monai_ms.data.synthetic import generate_cohort

    manifest = demo_manifest_path(dataset_dir, flair)
    dataset_dir = manifest.parent
    if manifest.is_file():
        return str(manifest)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the manifest
        if not manifest.is_file():
            cohort = dataset_dir / ("cohort_flair" if flair else "cohort")
            modalities = ["t1", "t2", "flair"] if flair else ["t1", "t2"]
            logger.info(f"generating the demo cohort ({subjects} patients, {spacing} mm, {' + '.join(modalities)}) into {cohort}")
            if not (cohort / "metadata.csv").is_file():
                generate_cohort(
                    cohort, subjects=subjects, seed=seed, spacing=spacing, tiny=tiny, overwrite=True, modalities=modalities
                )
            flair_pattern = "FLAIR/{session}_FLAIR_preprocessed.nii.gz" if flair else None
            entries = build_from_csv(cohort / "metadata.csv", relative_to=dataset_dir, flair_pattern=flair_pattern)
            split = split_entries(entries, seed=seed)
            write_manifest(
                {"name": "monai_ms demo cohort", "description": f"synthetic, {subjects} patients, {spacing} mm, seed {seed}", **split},
                manifest,
            )
    return str(manifest)


def validate_cohort(
    manifest: str | os.PathLike,
    task: str,
    splits: Sequence[str] = ("training", "validation"),
    modalities: Sequence[str] | None = None,
) -> bool:
    """Check every file and field a bundle run will read, before anything is cached or trained.

    Under ``python -m monai.bundle`` a bad cohort prints one line per problem and exits with status 1
    (no traceback); from Python it raises ``ManifestError`` with the same lines.

    Args:
        manifest: path of the manifest.
        task: ``edss``, ``lesion_seg``, ``brain_age`` or ``sex`` (the keys each entry needs).
        splits: the splits this run reads; each must be non-empty.
        modalities: the bundle's ``modalities`` (T1 first): the images every entry needs, in place of the
            task's default ones.

    Returns:
        True when the cohort is valid.
    """
    from monai_ms.data.manifest import ManifestError
    from monai_ms.data.validation import validate_manifest

    report = validate_manifest(manifest, task=task, splits=list(splits), modalities=modalities)
    if report.ok:
        logger.info(f"{manifest}: {len(report.summary_lines())} checks passed for task {task}")
        return True
    message = report.format()
    stop_or_raise(ManifestError(message), f"{message}\n\nstopped before training: fix the cohort ({manifest}) and rerun.")
