"""Tiny random-weight SD1 / SDXL checkpoints that WebUI Forge (2.x, lllyasviel main) and reForge (main) load.

Run with the host's own venv python (it imports the host's UNet / VAE classes so key names are the host's):

    <webui>/venv/bin/python tests/webui/make_forge_checkpoint.py --webui <webui> --family sd1|sdxl --out DIR/NAME

Writes DIR/NAME.safetensors (no .yaml: neither host needs one; a yaml beside the file is only read for
the prediction type on Forge and as the A1111 shell config on reForge). A file built with one host
loads in the other. Full-width layers make these files large (SD1 ~0.5 GB, SDXL ~2 GB), which is why
tests/webui/hosts.py keeps them in a cache between runs.

What the hosts accept (found by reading their loaders; see FORGE_SETUP.md):
* Family is detected from the UNet weights only (Forge: repositories/huggingface_guess; reForge:
  ldm_patched/modules/model_detection.py + supported_models.py). The matched entry requires exactly
  model_channels=320 (input_blocks.0.0.weight [320, 4, 3, 3]), context_dim 768 (SD1) / 2048 (SDXL),
  use_linear_in_transformer False (SD1, conv proj_in) / True (SDXL), label_emb (adm) 2816 for SDXL, and for SDXL
  the per-input-resblock transformer depths must equal one of the known SDXL variants:
  [0,0,2,2,10,10] (SDXL), [0,0,2,2,4,4] (SSD-1B), [0,2,5] (KOALA-700M), [0,2,6] (KOALA-1B), [0,0,1,1,2,2] (Vega).
  Everything else (channel_mult, num_res_blocks, output/middle depths) is inferred from the weights, so the UNet
  can be small *in depth* but not in width. Here: SD1 = mult [1,1], 1 res block/level, attention at level 1,
  middle depth 1; SDXL = KOALA-700M pattern [0,2,5] with mult [1,1,1] (all 320 wide), middle depth 1.
* VAE: both hosts build the standard SD VAE (ch 128, mult [1,2,4,4], 2 res blocks) from a fixed config
  (Forge: backend/huggingface/<repo>/vae/config.json; reForge: hard-coded ddconfig in ldm_patched/modules/sd.py),
  so it must be full size (83.7M params).
* CLIP: both hosts build the text encoders from fixed configs (Forge: backend/huggingface/<repo>/text_encoder*/;
  reForge: ldm_patched/modules/sd1_clip_config.json, clip_config_bigg.json): CLIP-L 12 layers x 768,
  CLIP-G 32 layers x 1280 (20 heads), vocab 49408, 77 positions. Width and depth must stay. Forge's Linear
  (backend/operations.py ForgeOperations.Linear) takes whatever weight shape the file has, so on Forge only, the
  MLP width could be shrunk there, but reForge's ops are real nn.Linear (size mismatch), and one file serves both.
* Layout = ordinary single-file ldm/sgm checkpoint: model.diffusion_model.*, first_stage_model.*,
  SD1 cond_stage_model.transformer.text_model.* (HF CLIP names), SDXL conditioner.embedders.0.transformer.text_model.*
  (HF) and conditioner.embedders.1.model.* (open_clip names: transformer.resblocks.N.attn.in_proj_weight, ...,
  text_projection [1280,1280] used as x @ P).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

SD1_UNET = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[1, 1],
    channel_mult=[1, 1],
    transformer_depth=[0, 1],
    transformer_depth_output=[1, 1, 0, 0],
    transformer_depth_middle=1,
    context_dim=768,
    num_heads=8,
    num_head_channels=-1,
    use_linear_in_transformer=False,
    adm_in_channels=None,
    num_classes=None,
    use_spatial_transformer=True,
)
SDXL_UNET = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[1, 1, 1],
    channel_mult=[1, 1, 1],
    transformer_depth=[0, 2, 5],
    transformer_depth_output=[1, 1, 1, 1, 0, 0],
    transformer_depth_middle=1,
    context_dim=2048,
    num_heads=-1,
    num_head_channels=64,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
    num_classes="sequential",
    use_spatial_transformer=True,
)
VAE_DDCONFIG = dict(
    double_z=True,
    z_channels=4,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
CLIP_G = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def host_kind(webui: Path) -> str:
    if (webui / "backend" / "nn" / "unet.py").exists():
        return "forge"
    if (webui / "ldm_patched").is_dir():
        return "reforge"
    raise SystemExit(f"{webui}: neither Forge 2 (backend/) nor reForge (ldm_patched/)")


def build_unet(kind: str, cfg: dict) -> torch.nn.Module:
    cfg = dict(cfg)
    if kind == "forge":
        from backend.nn.unet import IntegratedUNet2DConditionModel

        return IntegratedUNet2DConditionModel(**cfg)
    import ldm_patched.modules.ops as ops
    from ldm_patched.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(image_size=32, legacy=False, operations=ops.disable_weight_init, **cfg)


def build_vae(kind: str) -> torch.nn.Module:
    if kind == "forge":
        from backend.nn.vae import IntegratedAutoencoderKL

        return IntegratedAutoencoderKL.from_config(
            IntegratedAutoencoderKL.load_config("backend/huggingface/runwayml/stable-diffusion-v1-5/vae")
        )
    from ldm_patched.ldm.models.autoencoder import AutoencoderKL

    return AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)


def init_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Own init for every parameter (the hosts' ops skip torch's init): fan-in scaled normal weights,
    non-trivial norms, small biases, so nothing is zero and prompts/embeddings change the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def clip_text(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel state dict ("text_model.*") with random weights."""
    import transformers

    with torch.device("meta"):
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg))
    out = {}
    for name, p in model.state_dict().items():
        if name.endswith("position_ids"):
            continue
        if "layer_norm" in name and name.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("bias") or "embedding" in name:
            t = 0.02 * torch.randn(p.shape, generator=gen)
        else:
            t = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
        out[name] = t
    return out


def hf_to_open_clip(
    sd: dict[str, torch.Tensor], layers: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """HF CLIP text names -> open_clip names (what an SDXL checkpoint stores under conditioner.embedders.1.model.)."""
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    width = out["ln_final.weight"].shape[0]
    out["text_projection"] = torch.randn(width, width, generator=gen) / math.sqrt(width)
    ren = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in ren.items():
            for y in ("weight", "bias"):
                out[f"{dst}{b}.{y}"] = sd[f"{src}{a}.{y}"]
        for y in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{y}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{y}"] for p in ("q", "k", "v")], 0
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webui", type=Path, required=True)
    parser.add_argument("--family", choices=("sd1", "sdxl"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="path without extension")
    args = parser.parse_args()
    webui = args.webui.resolve()
    kind = host_kind(webui)
    sys.argv = [sys.argv[0], "--always-cpu"]  # the hosts parse sys.argv when their modules are imported
    sys.path.insert(0, str(webui))
    if kind == "forge":  # as modules_forge/initialization.py does
        sys.path.insert(0, str(webui / "packages_3rdparty"))
        sys.path.insert(0, str(webui / "repositories" / "huggingface_guess"))
    else:  # as modules_forge/initialization.py does (ldm_patched parses nothing by itself)
        from ldm_patched.modules import args_parser

        args_parser.args, _ = args_parser.parser.parse_known_args()
    import os

    os.chdir(webui)
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    unet = build_unet(kind, SD1_UNET if args.family == "sd1" else SDXL_UNET)
    init_(unet, gen)
    state |= {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    del unet
    vae = build_vae(kind)
    init_(vae, gen)
    state |= {"first_stage_model." + k: v for k, v in vae.state_dict().items()}
    del vae

    clip_l = clip_text(CLIP_L, gen)
    if args.family == "sd1":
        state |= {"cond_stage_model.transformer." + k: v for k, v in clip_l.items()}
    else:
        state |= {"conditioner.embedders.0.transformer." + k: v for k, v in clip_l.items()}
        clip_g = hf_to_open_clip(clip_text(CLIP_G, gen), CLIP_G["num_hidden_layers"], gen)
        state |= {"conditioner.embedders.1.model." + k: v for k, v in clip_g.items()}

    state = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    path = args.out.with_suffix(".safetensors")
    save_file(state, str(path), metadata={"made_by": "captinv tests/webui/make_forge_checkpoint.py"})
    n = sum(v.numel() for v in state.values())
    print(
        json.dumps(
            {
                "path": str(path),
                "host": kind,
                "family": args.family,
                "params": n,
                "bytes": path.stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    main()
