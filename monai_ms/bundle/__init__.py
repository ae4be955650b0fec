"""Bundle tooling: config helpers, the demo cohort, export and verification."""

from __future__ import annotations

from monai_ms.bundle.cohort import demo_manifest, validate_cohort
from monai_ms.bundle.config import bundle_root, check_overrides, running_workflow
from monai_ms.bundle.lesion_stage import start_lesion_pathway
from monai_ms.bundle.provenance import evaluation_provenance, run_overrides
from monai_ms.bundle.steps import (
    init_distributed,
    prepare_training,
    rank_partition,
    saliency_streams,
    scaled_head_param_groups,
    start_distributed,
    swap_transform,
    sync_batch_norm,
)
from monai_ms.bundle.verify import verify_checksums

__all__ = [
    "init_distributed",
    "prepare_training",
    "start_distributed",
    "rank_partition",
    "saliency_streams",
    "scaled_head_param_groups",
    "swap_transform",
    "sync_batch_norm",
    "bundle_root",
    "check_overrides",
    "demo_manifest",
    "evaluation_provenance",
    "run_overrides",
    "running_workflow",
    "start_lesion_pathway",
    "validate_cohort",
    "verify_checksums",
]
