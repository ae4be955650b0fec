"""Networks of monai_ms: one 3D encoder family and the four task networks.

- :class:`Conv3DBlock`, :class:`FeatureExtractor3D`: the shared encoder (MONAI ``Convolution`` /
  ``ResidualUnit`` blocks, ``Act`` / ``Norm`` factories).
- :class:`DualStreamRegressor`: EDSS from T1 + T2 (or any other modalities: :func:`stream_keys`) + demographics.
- :class:`BrainRegressor3D`: brain age (any scalar) from one or more image channels.
- :class:`BrainClassifier3D`: sex (any binary label) as a logit.
- :class:`BrainSegmenter3D`: lesion segmentation logits at full resolution.

All are TorchScript-able with strictly typed ``forward`` methods and take their sizes
(``channels``, ``strides``, ``hidden``) from the configuration, never from the input size.
"""

from __future__ import annotations

from monai_ms.networks.blocks import Conv3DBlock, GlobalPool, MLPHead, UpBlock
from monai_ms.networks.dual_stream import SECOND_STREAM_KEY, DualStreamRegressor, ForwardWithLesionMap, stream_keys
from monai_ms.networks.encoder import FeatureExtractor3D
from monai_ms.networks.heads import BrainClassifier3D, BrainRegressor3D, PooledHeadNetwork3D
from monai_ms.networks.segmenter import BrainSegmenter3D

__all__ = [
    "Conv3DBlock",
    "UpBlock",
    "GlobalPool",
    "MLPHead",
    "FeatureExtractor3D",
    "PooledHeadNetwork3D",
    "BrainRegressor3D",
    "BrainClassifier3D",
    "DualStreamRegressor",
    "ForwardWithLesionMap",
    "stream_keys",
    "SECOND_STREAM_KEY",
    "BrainSegmenter3D",
]
