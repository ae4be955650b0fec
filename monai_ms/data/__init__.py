"""Cohort data: manifests (build, validate, split), the paired T1/T2 transforms, synthetic cohorts."""

from __future__ import annotations

from monai_ms.data.datasets import CACHE_FILLS, CACHE_MODES, WorkerFilledCacheDataset, cohort_dataset
from monai_ms.data.manifest import (
    TASK_KEYS,
    ManifestError,
    build_from_bids,
    build_from_csv,
    load_datalist,
    new_manifest,
    read_manifest,
    write_manifest,
)
from monai_ms.data.split import split_entries
from monai_ms.data.synthetic import CohortSummary, generate_cohort, sample_latents
from monai_ms.data.synthetic_settings import SHIFTS, SynthSettings
from monai_ms.data.templates import Template, TemplateNotFoundError, load_template
from monai_ms.data.transforms import paired_transforms, parse_sex
from monai_ms.data.validation import Problem, ValidationReport, validate_manifest

__all__ = [
    "CACHE_FILLS",
    "CACHE_MODES",
    "cohort_dataset",
    "WorkerFilledCacheDataset",
    "CohortSummary",
    "SHIFTS",
    "SynthSettings",
    "TASK_KEYS",
    "Template",
    "TemplateNotFoundError",
    "ManifestError",
    "Problem",
    "ValidationReport",
    "build_from_bids",
    "build_from_csv",
    "generate_cohort",
    "load_template",
    "load_datalist",
    "new_manifest",
    "paired_transforms",
    "parse_sex",
    "read_manifest",
    "sample_latents",
    "split_entries",
    "validate_manifest",
    "write_manifest",
]
