"""Inference: inferers (flip TTA, autocast), post-processing, fault-tolerant batch inference, writers of masks,
lesion tables and QC pictures, saliency maps (MONAI's ``monai.inferers`` tier plus its writers).

Import from the modules (``monai_ms.engines.inference.<module>``) or from :mod:`monai_ms.engines`.
"""
