"""What a single-file (original layout) checkpoint is, read from its keys the way the WebUI reads them.

A `.safetensors` checkpoint carries no config. The WebUI guesses one from the
state dict (`modules/sd_models_config.py`); diffusers guesses too, but for SD2
it assumes the 768 px v-prediction model, so an SD2-base (ε, 512 px) file
would be trained against the wrong target. The variant is settled here, before
any weights load, and every model captinv cannot train is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from captinv import files
from captinv.errors import FileFormatError, ModelLoadError, UnsupportedModelError

Prediction = Literal["eps", "v"]

_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
_SD2_TEXT = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
_SDXL_BASE = "conditioner.embedders.1.model.ln_final.weight"
# key -> what the file is, for checkpoints that are recognised only to be refused
_REFUSED = {
    "model.diffusion_model.x_embedder.proj.weight": "Stable Diffusion 3 (an MMDiT without a UNet)",
    "double_blocks.0.img_attn.norm.key_norm.scale": "Flux (a transformer without a UNet)",
    "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": "Flux (a transformer without a UNet)",
    "conditioner.embedders.0.model.ln_final.weight": (
        "an SDXL refiner (it has no CLIP-L text encoder); load the SDXL base model"
    ),
    "depth_model.model.pretrained.act_postprocess3.0.project.0.bias": "an SD2 depth model",
    "embedder.model.ln_final.weight": "an SD2 unCLIP model",
    "cond_stage_model.roberta.embeddings.word_embeddings.weight": "AltDiffusion (an XLM-R text encoder)",
}


@dataclass(frozen=True)
class CheckpointKind:
    family: Literal["sd1", "sd2", "sdxl"]
    inpainting: bool  # a 9-channel UNet: noisy latents + mask + masked-image latents
    prediction: Prediction | None  # None: only the UNet's behaviour can tell (SD2 without a yaml)
    zero_terminal_snr: bool  # the file's `ztsnr` key: sample (and train) with the rescaled schedule
    yaml: Path | None  # the `<checkpoint>.yaml` beside it, which the WebUI would load it with


def _refusal(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"This checkpoint is {what}; captinv trains Stable Diffusion 1.x, 2.x and SDXL (base or inpainting)."
    )


def _yaml_prediction(yaml: Path) -> Prediction:
    """v when the config says so: ldm's `parameterization: v` (SD2-768-v) or sgm's `VScaling` denoiser
    (SDXL v-prediction); ε otherwise, as the WebUI reads it."""
    import yaml as pyyaml

    try:
        config = pyyaml.safe_load(yaml.read_text(encoding="utf-8")) or {}
    except (OSError, pyyaml.YAMLError) as err:
        raise ModelLoadError(f"Could not read the checkpoint's config {yaml}: {err}") from err
    params = (config.get("model") or {}).get("params") or {}
    v = params.get("parameterization") == "v" or "VScaling" in str(params.get("denoiser_config"))
    return "v" if v else "eps"


def inspect_checkpoint(path: Path) -> CheckpointKind:
    """The family and variant of a single-file checkpoint, from its keys (no weights are read)."""
    try:
        with files.open_safetensors(path) as handle:
            keys = set(handle.keys())
            in_channels = handle.get_slice(_UNET_IN).get_shape()[1] if _UNET_IN in keys else None
            sd2_width = handle.get_slice(_SD2_TEXT).get_shape()[1] if _SD2_TEXT in keys else None
    except (FileFormatError, RuntimeError) as err:
        raise ModelLoadError(f"Could not read the checkpoint {path}: {err}") from err
    for key, what in _REFUSED.items():
        if key in keys:
            raise _refusal(what)
    if in_channels is None:
        raise _refusal("not a Stable Diffusion checkpoint (no UNet under model.diffusion_model)")
    if in_channels == 8:
        raise _refusal("instruct-pix2pix (an 8-channel UNet conditioned on an input image)")
    if in_channels not in (4, 9):
        raise _refusal(f"a model whose UNet takes {in_channels} input channels")
    yaml = path.with_suffix(".yaml")
    yaml = yaml if yaml.is_file() else None
    if _SDXL_BASE in keys:
        family, prediction = "sdxl", "v" if "v_pred" in keys else "eps"
    elif sd2_width == 1024:
        family, prediction = "sd2", None
    elif _SD1_TEXT in keys:
        family, prediction = "sd1", "eps"
    else:
        raise _refusal("not a Stable Diffusion checkpoint (no CLIP text encoder captinv knows)")
    inpainting = in_channels == 9
    if yaml is not None:
        prediction = _yaml_prediction(yaml)
    elif inpainting:
        prediction = "eps"  # the released inpainting models (SD1, SD2-512, SDXL) are all ε
    return CheckpointKind(family, inpainting, prediction, "ztsnr" in keys, yaml)
