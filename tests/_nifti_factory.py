"""Tiny real NIfTI cohorts for the manifest tests (12^3 voxels; no dependence on the synthetic generator).

Each "head" is a ball of random positive intensities, zero outside (like a skull-stripped scan), drawn in
world coordinates so a T1 and a T2 on different grids show the same head.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "T1_AFFINE",
    "T2_AFFINE",
    "ball",
    "write_volume",
    "write_session",
    "write_seed_cohort",
    "write_bids_cohort",
    "manifest_for",
    "SEED_COLUMNS",
]

# T1: 12^3 at 4 mm RAS, centred on the world origin
T1_AFFINE = np.array([[4.0, 0, 0, -22], [0, 4.0, 0, -22], [0, 0, 4.0, -22], [0, 0, 0, 1]])
T1_SHAPE = (12, 12, 12)
# T2: another grid over the same head: LPS orientation, 6 mm slices, 12x12x8
T2_AFFINE = np.array([[-4.0, 0, 0, 22], [0, -4.0, 0, 22], [0, 0, 6.0, -21], [0, 0, 0, 1]])
T2_SHAPE = (12, 12, 8)
SEED_COLUMNS = [
    "Patient_ID",
    "MRI_ID",
    "MR_System",
    "Number_of_Lesions",
    "Scan_Date",
    "Sex",
    "Date_of_Birth",
    "EDSS",
    "Age_at_Scan",
]


def ball(
    shape: Sequence[int], affine: np.ndarray, centre_mm=(0.0, 0.0, 0.0), radius_mm: float = 16.0, seed: int = 0
) -> np.ndarray:
    """float32 volume: random intensities in [0.2, 1] inside a ball (world coordinates), 0 outside."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    inside = (np.linalg.norm(world - np.asarray(centre_mm), axis=1) <= radius_mm).reshape(shape)
    values = np.random.default_rng(seed).uniform(0.2, 1.0, size=shape).astype(np.float32)
    return np.where(inside, values, 0).astype(np.float32)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray = T1_AFFINE) -> Path:
    """Save ``data`` as NIfTI at ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_session(t1: Path, t2: Path | None = None, lesion: Path | None = None, seed: int = 0) -> None:
    """Write a T1 (and T2 on its own grid, and a lesion mask on the T1 grid) of one head."""
    head = ball(T1_SHAPE, T1_AFFINE, seed=seed)
    write_volume(t1, head)
    if t2 is not None:
        write_volume(t2, ball(T2_SHAPE, T2_AFFINE, seed=seed + 1000), T2_AFFINE)
    if lesion is not None:
        mask = np.zeros(T1_SHAPE, np.uint8)
        mask[5:7, 5:7, 6] = 1
        write_volume(lesion, mask)


def _sessions(n_subjects: int) -> list[dict]:
    """Rows of the seed metadata table: subjects P01.. with 1 or 2 sessions; sexes written in varied spellings."""
    spellings = ["F", "male", "female", "M", "f", "Male"]
    rows = []
    for subject in range(1, n_subjects + 1):
        for session in range(1, 3 if subject % 3 == 1 else 2):
            rows.append(
                {
                    "Patient_ID": f"P{subject:02d}",
                    "MRI_ID": f"sub-{subject:02d}-{session:02d}",
                    "MR_System": "3T" if subject % 2 else "1.5T",
                    "Number_of_Lesions": str(subject),
                    "Scan_Date": f"20{10 + session}-0{subject % 9 + 1}-15",
                    "Sex": spellings[subject % len(spellings)],
                    "Date_of_Birth": "1980-01-01",
                    "EDSS": f"{(subject % 8) * 0.5 + session - 1:g}",
                    "Age_at_Scan": f"{25 + subject + session:.1f}",
                }
            )
    return rows


def write_seed_cohort(
    root: Path, n_subjects: int = 4, no_mask: Sequence[str] = ("sub-02-01",)
) -> tuple[Path, list[dict]]:
    """The seed layout: root/metadata.csv, root/T1, root/T2, root/masks (none for ``no_mask`` sessions)."""
    root = Path(root)
    rows = _sessions(n_subjects)
    for index, row in enumerate(rows):
        session = row["MRI_ID"]
        write_session(
            root / "T1" / f"{session}_T1_preprocessed.nii.gz",
            root / "T2" / f"{session}_T2_preprocessed.nii.gz",
            None if session in no_mask else root / "masks" / f"{session}_lesion.nii.gz",
            seed=index,
        )
    csv_path = root / "metadata.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SEED_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, rows


def write_bids_cohort(root: Path) -> Path:
    """A BIDS folder: sub-P01 (2 sessions, lesion masks), sub-P02 (1 session, no mask, n/a EDSS)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    (root / "participants.tsv").write_text(
        "participant_id\tsex\tdate_of_birth\nsub-P01\tF\t1980-01-01\nsub-P02\tmale\t1975-05-05\n"
    )
    sessions = {"sub-P01": [("ses-01", "30.5", "2.0"), ("ses-02", "32.0", "3.5")], "sub-P02": [("ses-01", "45", "n/a")]}
    seed = 0
    for subject, visits in sessions.items():
        lines = ["session_id\tacq_time\tage\tedss\tscanner"]
        for label, age, edss in visits:
            lines.append(f"{label}\t2020-01-0{seed + 1}T10:00:00\t{age}\t{edss}\t3T")
            anat = root / subject / label / "anat"
            stem = f"{subject}_{label}"
            lesion = None
            if subject == "sub-P01":
                lesion = (
                    root / "derivatives" / "lesions" / subject / label / "anat" / f"{stem}_label-lesion_mask.nii.gz"
                )
            write_session(anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_T2w.nii.gz", lesion, seed=seed)
            seed += 1
        (root / subject / f"{subject}_sessions.tsv").write_text("\n".join(lines) + "\n")
    return root


def manifest_for(root: Path, n_subjects: int = 4) -> dict:
    """A valid manifest dict (paths relative to ``root``) over ``write_seed_cohort(root)`` files, split by subject."""
    _, rows = write_seed_cohort(root, n_subjects=n_subjects, no_mask=())
    splits = {"training": [], "validation": [], "testing": []}
    sex = {"f": "F", "female": "F", "m": "M", "male": "M"}
    for row in rows:
        number = int(row["Patient_ID"][1:])
        split = "validation" if number == n_subjects - 1 else "testing" if number == n_subjects else "training"
        session = row["MRI_ID"]
        splits[split].append(
            {
                "subject": row["Patient_ID"],
                "session": session,
                "t1": f"T1/{session}_T1_preprocessed.nii.gz",
                "t2": f"T2/{session}_T2_preprocessed.nii.gz",
                "lesion": f"masks/{session}_lesion.nii.gz",
                "age": float(row["Age_at_Scan"]),
                "sex": sex[row["Sex"].lower()],
                "edss": float(row["EDSS"]),
                "scanner": row["MR_System"],
            }
        )
    return {"name": "tiny", "format_version": 1, **splits}
