"""Finding the cross-attention K/V projections and naming them one way for diffusers, ldm and sgm UNets."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from torch import nn

from captinv.errors import UnsupportedModelError
from captinv.perfusion.layers import (
    LDM_TO_DIFFUSERS,
    canonical_name,
    cross_attention_layers,
    ldm_name,
    ldm_table,
)
from tests.perfusion import models


def _dims(layers) -> dict[str, tuple[int, int, int]]:
    return {
        layer.name: (layer.context_dim, layer.to_k.out_features, layer.to_v.out_features) for layer in layers
    }


@pytest.mark.parametrize(
    ("diffusers_unet", "structure", "count"),
    [
        (models.sd1_like, (models.SD1_CHANNELS, models.SD1_DEPTHS, models.SD1_MIDDLE, models.CONTEXT), 16),
        (
            models.sdxl_like,
            (models.SDXL_CHANNELS, models.SDXL_DEPTHS, models.SDXL_MIDDLE, 2 * models.CONTEXT),
            70,
        ),
    ],
    ids=["sd1", "sdxl"],
)
def test_diffusers_and_ldm_trees_give_the_same_layers_in_the_same_order(diffusers_unet, structure, count):
    from_diffusers = cross_attention_layers(diffusers_unet(torch.float32))
    from_ldm = cross_attention_layers(models.ldm_unet(*structure))
    assert len(from_diffusers) == count
    assert [layer.name for layer in from_ldm] == [layer.name for layer in from_diffusers]
    assert _dims(from_ldm) == _dims(from_diffusers)
    names = [layer.name for layer in from_diffusers]
    # diffusers registers up_blocks before mid_block; the list is in block order regardless
    assert names[0].startswith("down_blocks.") and names[-1].startswith("up_blocks.")
    mid = [i for i, name in enumerate(names) if name.startswith("mid_block.")]
    assert mid and max(mid) < min(i for i, name in enumerate(names) if name.startswith("up_blocks."))


@pytest.mark.parametrize(
    ("family", "count", "context", "total_out"),
    [("sd1", 16, 768, 12480), ("sd2", 16, 1024, 12480), ("sdxl", 70, 2048, 83200)],
)
def test_released_configurations(family, count, context, total_out):
    layers = cross_attention_layers(models.real_unet(family))
    assert len(layers) == count
    assert {layer.context_dim for layer in layers} == {context}
    assert sum(layer.to_v.out_features for layer in layers) == total_out
    assert sum(layer.to_k.out_features for layer in layers) == total_out


def test_real_sd1_and_sdxl_ldm_trees_map_onto_the_diffusers_layers():
    with torch.device("meta"):
        sd1 = models.ldm_unet((320, 640, 1280, 1280), (1, 1, 1, 0), 1, 768)
        sdxl = models.ldm_unet((320, 640, 1280), (0, 2, 10), 10, 2048)
    assert _dims(cross_attention_layers(sd1)) == _dims(cross_attention_layers(models.real_unet("sd1")))
    assert _dims(cross_attention_layers(sdxl)) == _dims(cross_attention_layers(models.real_unet("sdxl")))


def _converter_names(ldm: nn.Module) -> dict[str, str]:
    """ldm attn2 path -> the diffusers path diffusers' own single-file converter moves its weights to."""
    state = {f"model.diffusion_model.{key}": value for key, value in ldm.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(state, {"layers_per_block": 2})
    suffix = ".to_k.weight"
    mapping = {}
    for key, value in ldm.state_dict().items():
        if key.endswith(".attn2" + suffix):
            matches = [
                new
                for new, tensor in converted.items()
                if new.endswith(suffix) and torch.equal(tensor, value)
            ]
            assert len(matches) == 1
            mapping[key.removesuffix(suffix)] = matches[0].removesuffix(suffix)
    return mapping


@pytest.mark.parametrize(
    ("structure", "count"),
    [
        ((models.SD1_CHANNELS, models.SD1_DEPTHS, models.SD1_MIDDLE, models.CONTEXT), 16),
        ((models.SDXL_CHANNELS, models.SDXL_DEPTHS, models.SDXL_MIDDLE, models.CONTEXT), 70),
    ],
    ids=["sd1", "sdxl"],
)
def test_name_table_agrees_with_the_diffusers_checkpoint_converter_and_round_trips(structure, count):
    torch.manual_seed(1)
    expected = _converter_names(models.ldm_unet(*structure))
    assert len(expected) == count
    for ldm_path, diffusers_path in expected.items():
        assert canonical_name(ldm_path) == diffusers_path
        assert canonical_name(f"model.diffusion_model.{ldm_path}") == diffusers_path
        assert ldm_name(diffusers_path) == ldm_path
        assert canonical_name(diffusers_path) == diffusers_path


def test_every_table_entry_is_used_by_some_family():
    used = set()
    for structure in [((8,) * 4, (1, 1, 1, 0), 1), ((8,) * 3, (0, 1, 1), 1)]:
        for layer in cross_attention_layers(models.ldm_unet(*structure, context_dim=4)):
            used.add(ldm_name(layer.name).split(".transformer_blocks")[0])
    assert used == set(LDM_TO_DIFFUSERS)


def test_a_wrapped_unet_is_walked_through_its_prefix():
    holder = nn.Module()
    holder.diffusion_model = models.ldm_unet((8, 8), (1, 1), 1, 4)
    names = [layer.name for layer in cross_attention_layers(holder)]
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert all(".attn2" in name and "attn1" not in name for name in names)


def test_unknown_layouts_are_refused():
    with pytest.raises(UnsupportedModelError, match="no cross-attention"):
        cross_attention_layers(nn.Sequential(nn.Linear(2, 2)))
    # without ldm's record of its layout, input_blocks.3.1 of a one-res-block tree is not SD's
    one_res_block = models.ldm_unet((8, 8), (1, 1), 1, 4, num_res_blocks=1)
    with pytest.raises(UnsupportedModelError, match="input_blocks.3.1"):
        cross_attention_layers(one_res_block)
    with pytest.raises(UnsupportedModelError):
        ldm_name("down_blocks.7.attentions.0.transformer_blocks.0.attn2")


def test_the_derived_table_reproduces_the_released_layouts():
    derived = {"sd1": ldm_table([1, 2, 4, 4], 2), "sdxl": ldm_table([1, 2, 4], [2, 2, 2])}
    for table in derived.values():
        assert all(LDM_TO_DIFFUSERS[k] == v for k, v in table.items() if k in LDM_TO_DIFFUSERS)
    assert set(LDM_TO_DIFFUSERS) <= set(derived["sd1"]) | set(derived["sdxl"])


def test_a_custom_ldm_layout_maps_through_the_layout_it_records():
    """ldm/sgm's UNetModel keeps channel_mult and num_res_blocks; a small test checkpoint's layout then maps."""
    unet = models.ldm_unet((8, 8), (1, 1), 1, 4, num_res_blocks=1)
    unet.channel_mult, unet.num_res_blocks = [1, 1], [1, 1]
    twin = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=4,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    names = [layer.name for layer in cross_attention_layers(unet)]
    assert names == [layer.name for layer in cross_attention_layers(twin)]
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2" in names
