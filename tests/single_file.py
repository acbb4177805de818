"""Single-file (original ldm/sgm layout, as the WebUI loads them) checkpoints of the tiny pipelines.

diffusers converts such files in `from_single_file`, but ships the reverse conversion only as
scripts. This is that reverse for the layouts `factories` builds, so tests run the real
single-file loading code on files shaped like the released ones; a round trip through
`from_single_file` must give back every weight (tests/test_model_variants.py checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _rename(state: dict[str, torch.Tensor], prefixes: dict[str, str], inner: dict[str, dict[str, str]]):
    """Replace the longest matching prefix of each key; `inner[new prefix]` renames what follows it."""
    out = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in state.items():
        old = next(p for p in ordered if key.startswith(p))
        rest = key[len(old) :]
        for a, b in inner.get(prefixes[old], {}).items():
            if rest.startswith(a + "."):
                rest = b + rest[len(a) :]
        out[prefixes[old] + rest] = value
    return out


def unet_state(unet: Any) -> dict[str, torch.Tensor]:
    config, per = unet.config, unet.config.layers_per_block
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(len(config.down_block_types)):
        for j in range(per):
            index = 1 + i * (per + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per + 1)}.0.op."
    for i, kind in enumerate(config.up_block_types):
        for j in range(per + 1):
            index = i * (per + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        upsampler = 2 if kind.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0.conv."] = (
            f"output_blocks.{i * (per + 1) + per}.{upsampler}.conv."
        )
    resnets = {new: _RESNET for old, new in prefixes.items() if ".resnets." in old}
    return _rename(unet.state_dict(), prefixes, resnets)


def vae_state(vae: Any) -> dict[str, torch.Tensor]:
    count = len(vae.config.block_out_channels)
    prefixes = {
        f"{part}.{name}.": f"{part}.{name}."
        for part in ("encoder", "decoder")
        for name in ("conv_in", "conv_out")
    }
    prefixes |= {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(count):
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{count - 1 - i}.upsample.conv."
        for j in range(vae.config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{count - 1 - i}.block.{j}."
    inner = {new: {"conv_shortcut": "nin_shortcut"} for old, new in prefixes.items() if ".resnets." in old}
    inner |= {new: _VAE_ATTENTION for new in prefixes.values() if new.endswith("attn_1.")}
    state = _rename(vae.state_dict(), prefixes, inner)
    return {  # ldm's attention projections are 1x1 convolutions
        key: value[..., None, None] if ".attn_1." in key and value.dim() == 2 else value
        for key, value in state.items()
    }


def open_clip_state(model: Any) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in open_clip's layout (SD2's text encoder, SDXL's bigG)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        key = {
            "embeddings.token_embedding.weight": "token_embedding.weight",
            "embeddings.position_embedding.weight": "positional_embedding",
        }.get(key, key)
        key = key.replace("final_layer_norm.", "ln_final.").replace(
            "encoder.layers.", "transformer.resblocks."
        )
        for a, b in _OPEN_CLIP_LAYER.items():
            key = key.replace(f".{a}.", f".{b}.")
        out[key] = value
    for key in [k for k in out if ".self_attn.q_proj." in k]:
        stem, kind = key.split(".self_attn.q_proj.")
        parts = [out.pop(f"{stem}.self_attn.{p}_proj.{kind}") for p in "qkv"]
        out[f"{stem}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


def checkpoint_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict, keyed as the WebUI's files are."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet_state(pipe.unet).items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae_state(pipe.vae).items()}
    second = getattr(pipe, "text_encoder_2", None)
    text = {k: v for k, v in pipe.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    if second is not None:
        state |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in text.items()}
        state |= {f"conditioner.embedders.1.model.{k}": v for k, v in open_clip_state(second).items()}
    elif pipe.text_encoder.config.hidden_size == 1024:
        state |= {f"cond_stage_model.model.{k}": v for k, v in open_clip_state(pipe.text_encoder).items()}
    else:
        state |= {f"cond_stage_model.transformer.{k}": v for k, v in text.items()}
    return state


def save_checkpoint(state: dict[str, torch.Tensor], path: Path, *, flags: tuple[str, ...] = ()) -> Path:
    """Write `state` as a .safetensors checkpoint; `flags` ("v_pred", "ztsnr") are the marker keys
    the WebUI tests for."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()} | {f: torch.zeros(0) for f in flags}
    save_file(tensors, str(path))
    return path


def save_configs(pipe: Any, folder: Path, **unet_config: Any) -> Path:
    """The pipeline's configs without weights: what `from_single_file(config=...)` builds from."""
    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if component is None:
            continue
        target = folder / name
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(target)
        elif hasattr(component, "config"):  # transformers models
            component.config.save_pretrained(target)
        else:
            component.save_pretrained(target)
    if unet_config:
        path = folder / "unet" / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | unet_config))
    return folder
