"""Training: checkpoint / resume state and fault handlers (``state``), fitted starts of the networks' linear
paths (``normalization``), losses, batch preparation, the EDSS lesion pathway (MONAI's ``monai.engines`` tier).

Import from the modules (``monai_ms.engines.training.<module>``) or from :mod:`monai_ms.engines`.
"""
