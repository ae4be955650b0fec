"""monai_ms: MONAI toolkit for deep learning on multiple-sclerosis brain MRI."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
