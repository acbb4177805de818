"""Create a tiny random-weight checkpoint of a real WebUI architecture, plus its config yaml.

Runs with the WebUI's own Python (it imports ldm/sgm from the WebUI's repositories/):

    <webui>/venv/bin/python tests/webui/make_tiny_checkpoint.py --webui <webui> --family sd1|sdxl --out DIR/NAME

The yaml is the WebUI's own inference config with small widths (a `<checkpoint>.yaml` beside
a checkpoint is what the WebUI loads it with). Layers ldm initialises to zero get small random
values and normalisation layers non-trivial ones, or prompts and embeddings would change
nothing. The CLIP-L text encoder is built from the Hugging Face cache the caller prepared
(`prepare_clip_cache`), so its width (768) and tokenizer are the real ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

TINY_UNET = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2]}
TINY_VAE = {"ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": []}


def _config(webui: Path, family: str):
    if family == "sd1":
        config = OmegaConf.load(webui / "configs" / "v1-inference.yaml")
        unet = config.model.params.unet_config.params
        unet.update(TINY_UNET | {"num_heads": -1, "num_head_channels": 16})
        config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE)
        return config
    config = OmegaConf.load(
        webui / "repositories" / "generative-models" / "configs" / "inference" / "sd_xl_base.yaml"
    )
    unet = config.model.params.network_config.params
    unet.update(TINY_UNET | {"num_head_channels": 16, "transformer_depth": [0, 1], "adm_in_channels": 2816})
    config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE)
    embedders = config.model.params.conditioner_config.params.emb_models
    embedders[1].params.arch = "captinv-tiny-bigG"
    embedders[1].params.version = None
    return config


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and parameter.abs().sum() == 0:  # ldm's zero_module layers
                parameter.normal_(0.0, 0.02, generator=generator)
            elif "norm" in name and parameter.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webui", type=Path, required=True)
    parser.add_argument("--family", choices=("sd1", "sdxl"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="path without extension")
    args = parser.parse_args()
    for repo in ("stable-diffusion-stability-ai", "generative-models"):
        sys.path.insert(0, str(args.webui / "repositories" / repo))
    import transformers
    from ldm.util import instantiate_from_config

    # Only the config of CLIP-L is in the cache; its weights come from this checkpoint (as in the WebUI).
    transformers.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, name, *a, **k: cls(transformers.CLIPTextConfig.from_pretrained(name))
    )
    config = _config(args.webui, args.family)
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
