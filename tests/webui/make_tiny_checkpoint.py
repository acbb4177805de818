"""Create a tiny random-weight checkpoint of a real WebUI architecture, plus its config yaml.

Runs with the WebUI's own Python (it imports ldm/sgm from the WebUI's repositories/):

    <webui>/venv/bin/python tests/webui/make_tiny_checkpoint.py --webui <webui> --family sd1|sd2v|sdxl --out DIR/NAME

The yaml is the WebUI's own inference config with small widths (a `<checkpoint>.yaml` beside
a checkpoint is what the WebUI loads it with); `--full` keeps SD1's real sizes, for timing.
Layers ldm initialises to zero get small random values and normalisation layers non-trivial
ones, or prompts and embeddings would change nothing. That includes open_clip's `ln_*` layers:
with ln_final's bias at zero every row of SD2's encoding has mean zero, and A1111's emphasis
(which rescales by old mean / new mean) turns a whole encoding into NaN whenever that mean
rounds to exactly 0 (0/0), which no trained checkpoint does. The CLIP-L text encoder is built from the
Hugging Face cache the caller prepared (`prepare_clip_cache`), so its width (768) and tokenizer
are the real ones. For SDXL and SD2 (v-prediction, 768), tiny open_clip text model configs of
the real widths are registered in the WebUI venv's open_clip package (`captinv-tiny-bigG.json`,
`captinv-tiny-H.json`): the only files written outside the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

TINY_UNET = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2]}
OPEN_CLIP_ARCH = "captinv-tiny-bigG"
TINY_BIGG = {
    "embed_dim": 1280,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 2},
}
TINY_VAE = {"ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": []}
SD2_ARCH = "captinv-tiny-H"
TINY_H = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 2},
}


def _config(webui: Path, family: str, full: bool):
    if family == "sd1":
        config = OmegaConf.load(webui / "configs" / "v1-inference.yaml")
        if full:
            return config
        unet = config.model.params.unet_config.params
        unet.update(TINY_UNET | {"num_heads": -1, "num_head_channels": 16})
        config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE)
        return config
    if full:
        raise SystemExit("--full is for SD1 only (an SDXL-size random model does not fit a CPU benchmark)")
    if family == "sd2v":
        configs = webui / "repositories" / "stable-diffusion-stability-ai" / "configs" / "stable-diffusion"
        config = OmegaConf.load(configs / "v2-inference-v.yaml")
        config.model.params.unet_config.params.update(TINY_UNET | {"num_head_channels": 16})
        config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE)
        config.model.params.cond_stage_config.params.update({"arch": SD2_ARCH, "version": None})
        return config
    config = OmegaConf.load(
        webui / "repositories" / "generative-models" / "configs" / "inference" / "sd_xl_base.yaml"
    )
    unet = config.model.params.network_config.params
    unet.update(
        TINY_UNET
        | {"num_head_channels": 16, "transformer_depth": [0, 1], "spatial_transformer_attn_type": "softmax"}
    )
    config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE | {"attn_type": "vanilla"})
    embedders = config.model.params.conditioner_config.params.emb_models
    embedders[0].params.layer_idx = 1  # the tiny CLIP-L has two layers
    embedders[1].params.arch = OPEN_CLIP_ARCH
    embedders[1].params.version = None
    return config


def install_open_clip_configs() -> None:
    """SDXL and SD2 name their OpenCLIP text encoders by open_clip arch: register 2-layer ones of the
    real widths (1280 for SDXL's bigG, 1024 for SD2's ViT-H)."""
    import importlib.util

    folder = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "model_configs"
    for arch, config in ((OPEN_CLIP_ARCH, TINY_BIGG), (SD2_ARCH, TINY_H)):
        (folder / f"{arch}.json").write_text(json.dumps(config))


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and parameter.abs().sum() == 0:  # ldm's zero_module layers
                parameter.normal_(0.0, 0.02, generator=generator)
            elif ("norm" in name or ".ln_" in name) and parameter.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webui", type=Path, required=True)
    parser.add_argument("--family", choices=("sd1", "sd2v", "sdxl"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="path without extension")
    parser.add_argument(
        "--full",
        action="store_true",
        help="SD1 at its real sizes (random weights, for timing; needs a full CLIP cache)",
    )
    args = parser.parse_args()
    for repo in ("stable-diffusion-stability-ai", "generative-models"):
        sys.path.insert(0, str(args.webui / "repositories" / repo))
    import transformers
    from ldm.util import instantiate_from_config

    # Only the config of CLIP-L is in the cache; its weights come from this checkpoint (as in the WebUI).
    transformers.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, name, *a, **k: cls(transformers.CLIPTextConfig.from_pretrained(name))
    )
    if args.family != "sd1":
        install_open_clip_configs()
    config = _config(args.webui, args.family, args.full)
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    _randomise(model, torch.Generator().manual_seed(0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out.with_suffix(".safetensors")))
    OmegaConf.save(config, args.out.with_suffix(".yaml"))
    print(args.out.with_suffix(".safetensors"))


if __name__ == "__main__":
    main()
