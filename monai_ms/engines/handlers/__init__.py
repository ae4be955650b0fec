"""Ignite event handlers, thin wrappers over :mod:`monai_ms.engines.metrics` (MONAI's ``monai.handlers`` tier).

Learning curves, progress, prediction collection and tables (``common``), the evaluation reports
(``report``: the shared ending; ``brain_age``, ``classification``, ``segmentation``), the baseline guard, tracking.

Import from the modules (``monai_ms.engines.handlers.<module>``) or from :mod:`monai_ms.engines`.
"""
