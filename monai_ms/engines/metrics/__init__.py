"""Pure metric functions: numpy / scikit-learn in, dicts out, no ignite (MONAI's ``monai.metrics`` tier).

Scores with their baselines and calibration (``scores``), subject-bootstrap intervals (``bootstrap``), lesion-wise
segmentation metrics (``segmentation``), the brain-age gap and its bias correction (``brain_age``), class
balance and decisions (``classification``), the imaging-feature baseline (``imaging_features``).

Import from the modules (``monai_ms.engines.metrics.<module>``) or from :mod:`monai_ms.engines`.
"""
