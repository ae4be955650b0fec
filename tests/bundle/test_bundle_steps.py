"""The named config steps (monai_ms.bundle.steps) do what the expressions they replaced did."""

from __future__ import annotations

import torch
from bundle_runner import REPO
from monai.bundle import ConfigParser
from monai.transforms import Resized, ResizeWithPadOrCropd

from monai_ms.bundle import rank_partition, scaled_head_param_groups, swap_transform
from monai_ms.networks import DualStreamRegressor


def test_scaled_head_groups_split_every_parameter_once():
    network = DualStreamRegressor(channels=(4, 8), strides=(2, 2), hidden=(8,))
    head, rest = scaled_head_param_groups(network, "covariate_head", 10.0, 1e-3)
    assert head["lr"] == 10.0 * 1e-3 and "lr" not in rest
    ids = [id(p) for p in head["params"]] + [id(p) for p in rest["params"]]
    assert sorted(ids) == sorted(id(p) for p in network.parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in head["params"]} == {id(p) for p in network.covariate_head.parameters()}


def test_rank_partition_of_a_one_process_group_is_everything(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        data = [{"session": str(i)} for i in range(5)]
        assert rank_partition(data) == data
        assert sorted(d["session"] for d in rank_partition(data, shuffle=True, seed=3, even_divisible=True)) == [str(i) for i in range(5)]
    finally:
        torch.distributed.destroy_process_group()


def test_size_normalised_variant_swaps_the_crop_for_a_resize():
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/sex/configs/train.json"), str(REPO / "bundles/sex/configs/size_normalised.json")])
    chain = parser.get_parsed_content("validate#preprocessing")
    kinds = [type(t) for t in chain.transforms]
    assert Resized in kinds and ResizeWithPadOrCropd not in kinds and kinds[-1].__name__ == "ConcatItemsd"
    plain = swap_transform(parser.get_parsed_content("validate#paired"), Resized, None)
    assert ResizeWithPadOrCropd in [type(t) for t in plain.transforms]  # nothing to swap: unchanged
