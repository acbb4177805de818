"""Tiny UNets with the block structure of SD1 and SDXL, and random concepts for them.

`sd1_like` / `sdxl_like` are diffusers `UNet2DConditionModel`s with the real
families' block types, two res blocks per level and transformer depths (SD1:
depth 1 at three levels, 16 cross-attention layers; SDXL: depths 0/2/10 and a
depth-10 middle, 70 layers), only a few channels wide. `ldm_unet` builds the
module tree of ldm/sgm's `UNetModel` (openaimodel.py: the same index
arithmetic for input, middle and output blocks) with stand-ins for everything
except the cross-attention projections, which is all Perfusion touches.
`real_unet` builds the released configurations on the meta device (no memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.layers import CrossAttentionLayer

SD1_CHANNELS, SD1_DEPTHS, SD1_MIDDLE = (8, 8, 16, 16), (1, 1, 1, 0), 1
SDXL_CHANNELS, SDXL_DEPTHS, SDXL_MIDDLE = (8, 16, 16), (0, 2, 10), 10
CONTEXT = 12


def sd1_like(dtype: torch.dtype = torch.float64, context_dim: int = CONTEXT) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=SD1_CHANNELS,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=context_dim,
        attention_head_dim=2,
        norm_num_groups=4,
    ).to(dtype)


def sdxl_like(dtype: torch.dtype = torch.float64) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=SDXL_CHANNELS,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, *SDXL_DEPTHS[1:]),  # diffusers ignores the first for a DownBlock2D
        use_linear_projection=True,
        cross_attention_dim=2 * CONTEXT,
        attention_head_dim=2,
        norm_num_groups=4,
    ).to(dtype)


def small_unet(dtype: torch.dtype = torch.float64) -> UNet2DConditionModel:
    """Four cross-attention layers: for tests that run the whole UNet forward and backward."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT,
        attention_head_dim=2,
        norm_num_groups=4,
    ).to(dtype)


def real_unet(family: str) -> UNet2DConditionModel:
    """The released SD1.5 / SD2 / SDXL UNet configurations, on the meta device."""
    configs = {
        "sd1": {"cross_attention_dim": 768, "attention_head_dim": 8},
        "sd2": {
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "sdxl": {
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "block_out_channels": (320, 640, 1280),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
    }
    with torch.device("meta"):
        return UNet2DConditionModel(**configs[family])


class _Stub(nn.Module):
    """A res block, conv, down- or upsampler: only its slot in the block list matters."""

    def __init__(self, attribute: str) -> None:
        super().__init__()
        self.add_module(attribute, nn.Linear(1, 1))


class _CrossAttention(nn.Module):
    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)


class _BasicTransformerBlock(nn.Module):
    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = _CrossAttention(channels, channels)  # self-attention: never edited
        self.attn2 = _CrossAttention(channels, context_dim)


class _SpatialTransformer(nn.Module):
    def __init__(self, channels: int, depth: int, context_dim: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            _BasicTransformerBlock(channels, context_dim) for _ in range(depth)
        )


def ldm_unet(
    channels: Sequence[int],
    depths: Sequence[int],
    middle_depth: int,
    context_dim: int,
    num_res_blocks: int = 2,
) -> nn.Module:
    """ldm/sgm `UNetModel`'s module tree: input_blocks, middle_block, output_blocks, as openaimodel.py builds them."""

    def block(level: int, *extra: nn.Module) -> nn.Sequential:
        transformer = (
            [_SpatialTransformer(channels[level], depths[level], context_dim)] if depths[level] else []
        )
        return nn.Sequential(_Stub("in_layers"), *transformer, *extra)

    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Sequential(_Stub("conv"))])
    for level in range(len(channels)):
        unet.input_blocks.extend(block(level) for _ in range(num_res_blocks))
        if level != len(channels) - 1:
            unet.input_blocks.append(nn.Sequential(_Stub("op")))
    middle = _SpatialTransformer(channels[-1], middle_depth, context_dim)
    unet.middle_block = nn.Sequential(_Stub("in_layers"), middle, _Stub("in_layers"))
    unet.output_blocks = nn.ModuleList()
    for level in reversed(range(len(channels))):
        for i in range(num_res_blocks + 1):
            upsample = [_Stub("conv")] if level and i == num_res_blocks else []
            unet.output_blocks.append(block(level, *upsample))
    return unet


def random_concept(
    layers: Sequence[CrossAttentionLayer],
    *,
    seed: int,
    name: str = "sks",
    i_star: torch.Tensor | None = None,
    c_inv_i_star: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    embedding: dict[str, torch.Tensor] | None = None,
) -> PerfusionConcept:
    """A concept with random inputs and targets of the right shapes (C = identity unless given)."""
    draw = torch.Generator().manual_seed(seed)
    d = layers[0].context_dim
    i_star = torch.randn(d, generator=draw, dtype=dtype) if i_star is None else i_star
    return PerfusionConcept(
        name=name,
        superclass="toy",
        embedding=embedding or {"emb_params": torch.randn(1, 8, generator=draw)},
        i_star=i_star,
        c_inv_i_star=i_star.clone() if c_inv_i_star is None else c_inv_i_star,
        i_super=torch.randn(d, generator=draw, dtype=dtype),
        v_targets={
            layer.name: torch.randn(layer.to_v.out_features, generator=draw, dtype=dtype) for layer in layers
        },
        metadata={"covariance": "test"},  # all from the tests' one covariance
    )
