"""The UNet's cross-attention K and V projections, under one naming scheme.

Perfusion edits every `attn2.to_k` / `attn2.to_v` (cross-attention; `attn1`,
self-attention, is left alone). diffusers' `UNet2DConditionModel` and the
ldm/sgm `UNetModel` the WebUI runs both name them so, under different block
paths. Concept files key their per-layer vectors by the diffusers path
(`down_blocks.0.attentions.0.transformer_blocks.0.attn2`), the same stems kohya
LoRA keys use, and an explicit table translates ldm/sgm block paths. Module
traversal order is never used to pair layers: diffusers registers `up_blocks`
before `mid_block`, ldm does not. A projection need not be an `nn.Linear`: any
module that acts as one (in_features, out_features, a forward) qualifies, as
Forge's `ForgeOperations.Linear` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from captinv.errors import UnsupportedModelError

LDM_TO_DIFFUSERS: dict[str, str] = {
    # SD1/SD2 use input blocks 1, 2, 4, 5, 7, 8 and output blocks 3-11; SDXL (no attention at the
    # highest resolution) input blocks 4, 5, 7, 8 and output blocks 0-5. All have two res blocks per
    # level, so one table serves the three families.
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.2.1": "down_blocks.0.attentions.1",
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.0.1": "up_blocks.0.attentions.0",
    "output_blocks.1.1": "up_blocks.0.attentions.1",
    "output_blocks.2.1": "up_blocks.0.attentions.2",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
    "output_blocks.6.1": "up_blocks.2.attentions.0",
    "output_blocks.7.1": "up_blocks.2.attentions.1",
    "output_blocks.8.1": "up_blocks.2.attentions.2",
    "output_blocks.9.1": "up_blocks.3.attentions.0",
    "output_blocks.10.1": "up_blocks.3.attentions.1",
    "output_blocks.11.1": "up_blocks.3.attentions.2",
}
DIFFUSERS_TO_LDM: dict[str, str] = {new: old for old, new in LDM_TO_DIFFUSERS.items()}

_TAIL = r"\.(?P<tail>transformer_blocks\.\d+\.attn2)$"
_LDM = re.compile(r"(?:^|\.)(?P<block>(?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+)" + _TAIL)
_DIFFUSERS_BLOCK = r"(?P<block>(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+)"
_DIFFUSERS = re.compile(r"(?:^|\.)" + _DIFFUSERS_BLOCK + _TAIL)
CANONICAL = re.compile("^" + _DIFFUSERS_BLOCK + _TAIL)
"""A canonical layer name, as concept files store it."""

_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer: its canonical name and its two edited projections."""

    name: str
    to_k: nn.Module
    to_v: nn.Module

    @property
    def context_dim(self) -> int:
        return self.to_k.in_features

    def projection(self, kind: str) -> nn.Module:
        return self.to_k if kind == "k" else self.to_v


def is_linear(module: object) -> bool:
    """An `nn.Linear`, or a module that stands in for one (Forge's projections are plain modules
    with `in_features`, `out_features`, `weight` and their own forward)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Module) and all(
        isinstance(getattr(module, attribute, None), int) for attribute in ("in_features", "out_features")
    )


def ldm_table(channel_mult: Sequence[int], num_res_blocks: int | Sequence[int]) -> dict[str, str]:
    """ldm/sgm attention-block paths -> diffusers ones, for any level count and res blocks per level.

    openaimodel.py numbers input blocks 1.. with one extra per downsample and output blocks from 0,
    one more per level than on the way down; diffusers numbers attentions per level. For the released
    layouts this is `LDM_TO_DIFFUSERS`; smaller or custom UNets get their own table.
    """
    levels = len(channel_mult)
    blocks = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
    table, index = {"middle_block.1": "mid_block.attentions.0"}, 1
    for level in range(levels):
        for r in range(blocks[level]):
            table[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{r}"
            index += 1
        index += level != levels - 1  # the downsample
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        for r in range(blocks[level] + 1):
            table[f"output_blocks.{index}.1"] = f"up_blocks.{up}.attentions.{r}"
            index += 1
    return table


def canonical_name(path: str, table: Mapping[str, str] = LDM_TO_DIFFUSERS) -> str:
    """The diffusers-style name of the `attn2` module at `path` (any prefix, either naming)."""
    found = _DIFFUSERS.search(path)
    if found:
        return f"{found['block']}.{found['tail']}"
    found = _LDM.search(path)
    if found and found["block"] in table:
        return f"{table[found['block']]}.{found['tail']}"
    raise UnsupportedModelError(
        f"Cross-attention layer '{path}' is not in the SD1/SD2/SDXL layout Perfusion knows; "
        "this UNet cannot be edited."
    )


def ldm_name(canonical: str) -> str:
    """The ldm/sgm path (relative to the UNet) of a canonical layer name."""
    found = CANONICAL.match(canonical)
    if not found or found["block"] not in DIFFUSERS_TO_LDM:
        raise UnsupportedModelError(f"'{canonical}' has no ldm/sgm counterpart.")
    return f"{DIFFUSERS_TO_LDM[found['block']]}.{found['tail']}"


def _order(name: str) -> tuple[int, ...]:
    return (_BLOCK_ORDER[name.split(".", 1)[0]], *(int(n) for n in re.findall(r"\d+", name)))


def cross_attention_layers(unet: nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of `unet` (diffusers, ldm or sgm), in block order."""
    layers: dict[str, CrossAttentionLayer] = {}
    channel_mult, res_blocks = getattr(unet, "channel_mult", None), getattr(unet, "num_res_blocks", None)
    table = ldm_table(channel_mult, res_blocks) if channel_mult and res_blocks else LDM_TO_DIFFUSERS
    for path, module in unet.named_modules():
        if path.rsplit(".", 1)[-1] != "attn2":
            continue
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if not (is_linear(to_k) and is_linear(to_v)):
            raise UnsupportedModelError(f"'{path}' has no linear to_k/to_v; this UNet cannot be edited.")
        name = canonical_name(path, table)
        if name in layers:
            raise UnsupportedModelError(f"Two modules map to the layer name '{name}' (second: '{path}').")
        layers[name] = CrossAttentionLayer(name, to_k, to_v)
    if not layers:
        raise UnsupportedModelError("This UNet has no cross-attention (attn2) layers to edit.")
    return [layers[name] for name in sorted(layers, key=_order)]
