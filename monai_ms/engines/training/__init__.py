"""Training: checkpoint / resume state and fault handlers (``state``), fitted starts of the networks' linear
paths (``normalization``), losses, batch preparation, the EDSS lesion pathway (MONAI's ``monai.engines`` tier).
"""

from __future__ import annotations

from monai_ms.engines.training.lesion_pathway import (
    AUTO,
    check_lesion_provenance,
    init_lesion_pathway,
    provenance_path,
    read_provenance,
    resolve_lesion_init,
    training_provenance,
)
from monai_ms.engines.training.losses import (
    LesionAuxiliaryLoss,
)
from monai_ms.engines.training.normalization import (
    fit_covariate_head,
    fit_feature_paths,
    fit_histogram_head,
    fit_normalization,
    subject_folds,
)
from monai_ms.engines.training.prepare_batch import (
    PrepareBatchMultiInput,
)
from monai_ms.engines.training.state import (
    LAST_CHECKPOINT,
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    EpochSeedHandler,
    NonFiniteLossError,
    ResumeError,
    StartValidationHandler,
    TrainingCheckpoint,
    TrainingFaultHandler,
    WarmupEarlyStopHandler,
    check_resume,
    check_writable,
    save_checkpoint,
)

__all__ = [
    "LAST_CHECKPOINT",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "EpochSeedHandler",
    "TrainingCheckpoint",
    "TrainingFaultHandler",
    "WarmupEarlyStopHandler",
    "StartValidationHandler",
    "NonFiniteLossError",
    "ResumeError",
    "check_resume",
    "check_writable",
    "save_checkpoint",
    "fit_normalization",
    "fit_covariate_head",
    "fit_feature_paths",
    "fit_histogram_head",
    "subject_folds",
    "LesionAuxiliaryLoss",
    "PrepareBatchMultiInput",
    "AUTO",
    "provenance_path",
    "training_provenance",
    "read_provenance",
    "resolve_lesion_init",
    "check_lesion_provenance",
    "init_lesion_pathway",
]
