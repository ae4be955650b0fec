"""The paired T1/T2 chain on real NIfTI files: alignment, normalisation, augmentation, inversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, NormalizeIntensity

from monai_ms.data.transforms import EncodeDemographics, RandGaussianNoise32d, augmentation, paired_transforms, parse_sex, zscore_nonzero

WORLD_CENTRE = np.array([10.0, -20.0, 15.0])  # mm, away from the origin so grid mistakes show


def _ellipsoid_image(shape, zooms, orientation_flip, centre_mm, radii_mm, value, path, dtype=np.float32):
    """A filled ellipsoid at a world position, written on a given voxel grid (optionally LPS)."""
    zooms = np.asarray(zooms, dtype=float)
    affine = np.diag([*zooms, 1.0])
    if orientation_flip:  # LPS: x and y axes reversed
        affine[0, 0], affine[1, 1] = -zooms[0], -zooms[1]
    # place the grid so its centre sits at the world centre
    centre_index = (np.asarray(shape) - 1) / 2
    affine[:3, 3] = WORLD_CENTRE - affine[:3, :3] @ centre_index
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (((xyz - centre_mm) / radii_mm) ** 2).sum(1) <= 1
    # a gentle gradient inside, so a z-score is defined (a constant image has no spread)
    gradient = 1.0 + 0.01 * (xyz[:, 0] - centre_mm[0]) if dtype == np.float32 else 1.0
    data = (inside * gradient * value).reshape(shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return affine


@pytest.fixture()
def pair(tmp_path):
    brain_centre = WORLD_CENTRE + np.array([3.0, -2.0, 1.0])
    lesion_centre = brain_centre + np.array([6.0, 4.0, 0.0])
    t1_affine = _ellipsoid_image((40, 44, 36), (2, 2, 2), False, brain_centre, (24, 28, 20), 100.0, tmp_path / "t1.nii.gz")
    _ellipsoid_image((48, 52, 28), (1.8, 1.8, 3.0), True, brain_centre, (24, 28, 20), 50.0, tmp_path / "t2.nii.gz")
    _ellipsoid_image((40, 44, 36), (2, 2, 2), False, lesion_centre, (5, 5, 5), 1, tmp_path / "lesion.nii.gz", np.uint8)
    item = {
        "t1": str(tmp_path / "t1.nii.gz"),
        "t2": str(tmp_path / "t2.nii.gz"),
        "lesion": str(tmp_path / "lesion.nii.gz"),
        "age": 40.0,
        "sex": "female",
        "edss": 3.5,
        "session": "s1",
    }
    return item, t1_affine


def test_eval_chain_aligns_t2_on_t1_and_normalises(pair):
    item, _ = pair
    out = paired_transforms("eval", label_key="lesion", target_key="edss", demographics=True, spacing=2.0, roi_size=(48, 48, 48))(item)
    t1, t2, lesion = out["t1"], out["t2"], out["lesion"]
    assert t1.shape == t2.shape == lesion.shape == (1, 48, 48, 48)
    assert t1.dtype == t2.dtype == torch.float32
    # T2 came from another grid (LPS, 1.8 x 1.8 x 3 mm) and must now cover the same voxels as T1
    centroids = [np.argwhere(image[0].numpy() != 0).mean(0) for image in (t1, t2)]
    np.testing.assert_allclose(centroids[0], centroids[1], atol=0.5)  # voxels
    # z-score over brain voxels per modality
    for image in (t1, t2):
        brain = image[image != 0]
        assert abs(float(brain.mean())) < 1e-3 and abs(float(brain.std()) - 1) < 0.05
    assert set(torch.unique(lesion).tolist()) <= {0.0, 1.0} and lesion.sum() > 0
    assert out["demographics"].tolist() == [40.0, 0.0]
    assert out["edss"].shape == (1,) and float(out["edss"]) == 3.5


def test_train_chain_augments_identically(pair):
    item, _ = pair
    chain = paired_transforms("train", label_key="lesion", spacing=2.0, roi_size=(48, 48, 48), augment_prob=1.0, noise_std=0.0)
    chain.set_random_state(seed=3)
    a = chain(dict(item))
    chain.set_random_state(seed=4)
    b = chain(dict(item))
    assert not torch.equal(a["t1"], b["t1"])  # random per call
    # the same spatial draw moved T1, T2 and the mask together: the mask still sits inside the brain
    for out in (a, b):
        brain = (out["t1"][0] != 0) & (out["t2"][0] != 0)
        lesion = out["lesion"][0] > 0
        assert lesion.sum() > 0 and (lesion & brain).sum() / lesion.sum() > 0.95


def test_patch_sampling_returns_patches_with_lesions(pair):
    item, _ = pair
    chain = paired_transforms("train", label_key="lesion", spacing=2.0, roi_size=None, patch_size=(16, 16, 16), patches_per_volume=4,
                              augment=False, noise_std=0.0)
    patches = chain(dict(item))
    assert isinstance(patches, list) and len(patches) == 4
    assert all(p["t1"].shape == (1, 16, 16, 16) for p in patches)
    assert any(p["lesion"].sum() > 0 for p in patches)  # half the centres are lesion voxels


def test_infer_chain_inverts_to_original_t1_grid(pair):
    item, t1_affine = pair
    item = {k: v for k, v in item.items() if k in ("t1", "t2", "session")}
    chain = paired_transforms("infer", spacing=3.0, roi_size=None, divisible_by=16)
    out = chain(item)
    assert all(s % 16 == 0 for s in out["t1"].shape[1:])
    out["pred"] = out["t1"].clone()
    restored = Invertd(keys="pred", transform=chain, orig_keys="t1", nearest_interp=False)(out)["pred"]
    assert restored.shape[1:] == (40, 44, 36)
    np.testing.assert_allclose(restored.affine.numpy(), t1_affine, atol=1e-4)


def test_sex_parsing_rejects_unknown_values():
    assert parse_sex("F") == 0.0 and parse_sex(" MALE ") == 1.0 and parse_sex(1) == 1.0
    with pytest.raises(ValueError, match="F/M/female/male"):
        parse_sex("x")
    assert EncodeDemographics()(50, "m").tolist() == [50.0, 1.0]


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage must be one of"):
        paired_transforms("training")


def test_resampling_residues_outside_the_brain_become_background(tiny_manifest):
    from monai.transforms import Compose

    from monai_ms.data import load_datalist
    from monai_ms.data.transforms import ZeroResampleResidued, preprocessing

    # the real template resampled from 4 to 3 mm: Spacingd leaves ~1e-13 values around the brain
    entry = load_datalist(tiny_manifest, "training", validate=False)[0]
    t1 = Compose(preprocessing(spacing=3.0, roi_size=None))({"t1": entry["t1"], "t2": entry["t2"]})["t1"]
    nonzero = t1[t1 != 0].abs()
    assert nonzero.min() > 1e-5 * t1.abs().max()  # no leftovers the brain crop and z-score count as brain
    image = torch.tensor([[0.0, 3e-13, -2e-12, 0.5, 800.0]])
    cleaned = ZeroResampleResidued(keys="x")({"x": image})["x"]
    assert cleaned.tolist() == [[0.0, 0.0, 0.0, 0.5, 800.0]]


def test_zscore_nonzero_equals_monai_normalize_intensity():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(4, 12, 10, 8, generator=generator) * 900 + 50
    image[:, :4] = 0  # background
    image[2] = torch.where(image[2] != 0, torch.full_like(image[2], 7.0), image[2])  # constant brain
    image[3] = 0  # an empty channel
    meta = MetaTensor(image.clone(), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    expected = NormalizeIntensity(nonzero=True, channel_wise=True)(image.clone())
    ours = zscore_nonzero(meta)
    torch.testing.assert_close(ours.as_tensor(), torch.as_tensor(expected), rtol=0, atol=2e-6)
    assert isinstance(ours, MetaTensor) and torch.equal(ours.affine, meta.affine)
    assert torch.equal(meta.as_tensor(), image)  # the input is not modified
    assert float(ours[0][ours[0] != 0].mean()).__abs__() < 1e-5 and torch.all(ours[3] == 0)


def test_cached_affine_grid_gives_the_same_augmentation(pair):
    item, _ = pair
    base = paired_transforms("eval", label_key="lesion", spacing=2.0, roi_size=(48, 48, 48))(dict(item))
    outputs = []
    for size in (None, (48, 48, 48)):
        chain = augmentation(["t1", "t2"], "lesion", prob=1.0, spatial_size=size)
        for transform in chain:
            transform.set_random_state(seed=5)
        out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in base.items()}
        for transform in chain:
            out = transform(out)
        outputs.append(out)
    for key in ("t1", "t2", "lesion"):
        assert torch.equal(outputs[0][key], outputs[1][key])


def test_training_items_are_plain_tensors_and_evaluation_items_keep_metadata(pair):
    item, _ = pair
    kwargs = {"label_key": "lesion", "spacing": 2.0, "roi_size": (48, 48, 48)}
    trained = paired_transforms("train", **kwargs)(dict(item))
    evaluated = paired_transforms("eval", **kwargs)(dict(item))
    assert all(type(trained[k]) is torch.Tensor for k in ("t1", "t2", "lesion"))  # no collation of metadata
    assert all(isinstance(evaluated[k], MetaTensor) for k in ("t1", "t2", "lesion"))


def test_float32_noise_has_the_asked_distribution_and_is_reproducible():
    image = {"t1": torch.zeros(1, 40, 40, 40)}
    noise = RandGaussianNoise32d(keys="t1", prob=1.0, mean=0.5, std=0.2, sample_std=False)
    first = noise.set_random_state(seed=7)(dict(image))["t1"]
    assert first.dtype == torch.float32 and first.shape == (1, 40, 40, 40)
    assert abs(float(first.mean()) - 0.5) < 0.01 and abs(float(first.std()) - 0.2) < 0.01
    assert torch.equal(noise.set_random_state(seed=7)(dict(image))["t1"], first)  # seeded by the transform's R
    assert not torch.equal(noise(dict(image))["t1"], first)  # a new draw per call
    untouched = RandGaussianNoise32d(keys="t1", prob=0.0, std=0.2)(dict(image))["t1"]
    assert torch.equal(untouched, image["t1"])


def test_three_modalities_each_on_the_t1_grid_normalised_alone_and_augmented_together(pair, tmp_path):
    """A FLAIR on a third grid (LPS, 2.2 x 2.2 x 4 mm, another intensity scale) joins T1 and T2: one spatial
    draw for all of them and the mask, a z-score per modality, one channel each under ``concat_key``."""
    item, _ = pair
    centre = WORLD_CENTRE + np.array([3.0, -2.0, 1.0])
    _ellipsoid_image((44, 48, 20), (2.2, 2.2, 4.0), True, centre, (24, 28, 20), 900.0, tmp_path / "flair.nii.gz")
    item = {**item, "flair": str(tmp_path / "flair.nii.gz")}
    keys = ["t1", "t2", "flair"]
    out = paired_transforms("eval", image_keys=keys, label_key="lesion", spacing=2.0, roi_size=(48, 48, 48), concat_key="image")(item)
    assert out["image"].shape == (3, 48, 48, 48)
    centroids = [np.argwhere(out[key][0].numpy() != 0).mean(0) for key in keys]
    np.testing.assert_allclose(centroids[0], centroids[2], atol=0.75)  # voxels: the FLAIR sits on the T1's
    for key in keys:
        brain = out[key][out[key] != 0]
        assert abs(float(brain.mean())) < 1e-3 and abs(float(brain.std()) - 1) < 0.05
    chain = paired_transforms(
        "train", image_keys=keys, label_key="lesion", spacing=2.0, roi_size=(48, 48, 48), augment_prob=1.0, noise_std=0.0
    )
    chain.set_random_state(seed=5)
    moved = chain(dict(item))
    brain = (moved["t1"][0] != 0) & (moved["flair"][0] != 0)
    lesion = moved["lesion"][0] > 0
    assert lesion.sum() > 0 and (lesion & brain).sum() / lesion.sum() > 0.95
    overlap = ((moved["t1"][0] != 0) & (moved["flair"][0] != 0)).sum() / (moved["t1"][0] != 0).sum()
    assert overlap > 0.9  # the same rotation, scaling and flip moved both



@pytest.mark.parametrize("concat_key", [None, "streams"])
def test_monai_only_description_of_the_infer_chain_gives_the_same_item(pair, concat_key):
    """The exported bundle's MONAI-only config is written from the same steps as the chain monai_ms runs."""
    from monai.bundle import ConfigParser

    from monai_ms.data.fields import SEX_CONFIG_CODES
    from monai_ms.data.transforms import paired_steps

    item, _ = pair
    kwargs = dict(demographics=True, spacing=2.5, roi_size=(40, 40, 40), concat_key=concat_key, concat_keys=["t2"])
    steps = paired_steps("infer", **kwargs)
    entries = [entry for step in steps for entry in step.monai_config()]
    assert all("monai_ms" not in str(entry) for entry in entries)
    parser = ConfigParser({"imports": ["$import numpy", "$import torch"], "sex_codes": dict(SEX_CONFIG_CODES),
                           "chain": {"_target_": "Compose", "transforms": entries}})
    theirs = parser.get_parsed_content("chain")(dict(item))
    ours = paired_transforms("infer", **kwargs)(dict(item))
    for key in ["t1", "t2", "demographics"] + ([concat_key] if concat_key else []):
        torch.testing.assert_close(torch.as_tensor(theirs[key]), torch.as_tensor(ours[key]), rtol=1e-5, atol=1e-5)
    # a step without a MONAI equivalent is refused, not silently dropped
    eval_steps = paired_steps("eval", target_key="edss", **kwargs)
    with pytest.raises(ValueError, match="_ScalarTargetd has no MONAI-only equivalent"):
        [entry for step in eval_steps for entry in step.monai_config()]


def test_augmentation_can_keep_the_brain_volume_that_sex_and_brain_age_read(pair):
    """Scaling and the rotation's blended edge change the non-zero volume (the size signal of sex, the CSF share
    of atrophy); ``augment_scale=0`` with ``augment_keep_extent`` keeps the volume the evaluation measures."""
    from monai.transforms import Compose

    from monai_ms.data.transforms import ZScoreNonzerod, build, paired_steps

    item, _ = pair

    def chain(**augment) -> Compose:  # in raw units: the z-score sets the voxels at the brain's mean to 0
        steps = paired_steps("train", spacing=2.0, roi_size=(48, 48, 48), augment_prob=1.0, noise_std=0.0, **augment)
        return Compose(build([s for s in steps if s.target is not ZScoreNonzerod]))

    volume = float((chain(augment=False)(dict(item))["t1"] != 0).sum())

    def volumes(scale: float, keep_extent: bool) -> np.ndarray:
        chain_ = chain(augment_scale=scale, augment_keep_extent=keep_extent)
        chain_.set_random_state(seed=0)
        outs = [chain_(dict(item)) for _ in range(6)]
        assert all(set(o) == set(outs[0]) and "t1_extent" not in o for o in outs)
        return np.array([float((o["t1"] != 0).sum()) for o in outs]) / volume

    default, unscaled, kept = volumes(0.1, False), volumes(0.0, False), volumes(0.0, True)
    assert np.ptp(default) > 0.08  # +-10% per axis: the volume differs from draw to draw
    assert np.ptp(unscaled) < 0.02 and unscaled.min() > 1.1  # rotation alone: the same, but with a dim shell
    assert np.abs(kept - 1).max() < 0.03  # the evaluation's volume


def test_low_resolution_augmentation_removes_fine_detail_and_keeps_the_grid():
    """``augment_low_resolution``: a coarser acquisition simulated on the training grid (nnU-Net's augmentation)."""
    from monai.transforms import Compose

    from monai_ms.data.transforms import augmentation

    texture = torch.rand(1, 32, 32, 32, generator=torch.Generator().manual_seed(0)) + 1.0
    chain = Compose(augmentation(["t1"], prob=0.0, low_resolution=1.0, spatial_size=(32, 32, 32)))
    chain.set_random_state(seed=0)
    out = chain({"t1": texture.clone()})["t1"]
    assert out.shape == texture.shape

    def detail(x: torch.Tensor) -> float:  # mean absolute difference of neighbouring voxels
        return float((x[:, 1:] - x[:, :-1]).abs().mean())

    assert detail(out) < 0.8 * detail(texture)
    unchanged = Compose(augmentation(["t1"], prob=0.0, low_resolution=0.0, spatial_size=(32, 32, 32)))({"t1": texture.clone()})["t1"]
    assert torch.equal(torch.as_tensor(unchanged), texture)
