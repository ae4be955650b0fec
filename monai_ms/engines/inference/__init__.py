"""Inference: inferers (flip TTA, autocast), post-processing, fault-tolerant batch inference, writers of masks,
lesion tables and QC pictures, saliency maps (MONAI's ``monai.inferers`` tier plus its writers).
"""

from __future__ import annotations

from monai_ms.engines.inference.autocast import (
    AutocastInferer,
    cpu_autocast,
    cpu_supports_bf16,
)
from monai_ms.engines.inference.batch import (
    FAILED_KEY,
    BatchInference,
    BatchInferenceError,
    FailureTolerantDataset,
    describe_failure,
)
from monai_ms.engines.inference.saliency import (
    METHODS,
    TISSUE_LABELS,
    SaliencyExplainer,
    SaliencyRunner,
    SingleInputView,
    region_saliency,
    save_saliency_figure,
    summarize_regions,
)
from monai_ms.engines.inference.segmentation import (
    FlipTTAInferer,
    LesionMaskWriter,
    input_files,
    lesion_postprocessing,
    output_path,
    save_qc_figure,
)

__all__ = [
    "AutocastInferer",
    "cpu_autocast",
    "cpu_supports_bf16",
    "save_qc_figure",
    "FlipTTAInferer",
    "lesion_postprocessing",
    "input_files",
    "output_path",
    "LesionMaskWriter",
    "FAILED_KEY",
    "BatchInference",
    "BatchInferenceError",
    "FailureTolerantDataset",
    "describe_failure",
    "METHODS",
    "TISSUE_LABELS",
    "SingleInputView",
    "SaliencyExplainer",
    "region_saliency",
    "summarize_regions",
    "save_saliency_figure",
    "SaliencyRunner",
]
