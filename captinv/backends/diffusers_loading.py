"""Loading a diffusers pipeline headless, as the variant the checkpoint really is.

A diffusers folder says what it is in its scheduler config. A single file does
not: `checkpoints.inspect_checkpoint` reads the family from its keys, and here
the prediction type is settled the way the WebUI settles it (a yaml beside the
file, a `v_pred` key, else the UNet's own response) instead of diffusers'
guess, and a `ztsnr` key switches the schedule to zero terminal SNR. The user's
`--prediction-type` overrides every guess.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captinv.backends.checkpoints import CheckpointKind, Prediction, inspect_checkpoint
from captinv.hub import ModelSource, hub_reachable

_DIFFUSERS_NAMES = {"eps": "epsilon", "v": "v_prediction"}


@dataclass(frozen=True)
class Loaded:
    pipe: Any
    prediction_source: str  # where the prediction type came from, shown to the user


def model_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype:
    """float16 on a GPU with mixed precision (autocast and a loss scaler keep training stable),
    float32 otherwise: `mixed_precision` off means a float32 model, not an unscaled float16 one."""
    return torch.float16 if mixed_precision and device.type == "cuda" else torch.float32


def load_pipeline(
    source: ModelSource, dtype: torch.dtype, prediction: Prediction | None = None, config: str | None = None
) -> Loaded:
    """A pipeline from a diffusers folder, a hub id or a single .safetensors file.

    `config` (a diffusers folder or hub id) tells diffusers how to build a single file's
    components; without it diffusers fetches its default for the detected family.
    """
    import diffusers

    path = Path(source.spec)
    if path.is_file():
        kind = inspect_checkpoint(path)
        pipeline_class = (
            diffusers.StableDiffusionXLPipeline
            if kind.family == "sdxl"
            else diffusers.StableDiffusionPipeline
        )
        extra = {"config": config} if config else {}
        if not hub_reachable():  # its configuration comes from the hub's cache: look there only (no retries)
            extra["local_files_only"] = True
        pipe = pipeline_class.from_single_file(str(path), torch_dtype=dtype, **extra)
        return Loaded(pipe, _settle_single_file(pipe, kind, prediction))
    extra: dict[str, Any] = dict(source.load_kwargs)
    index = path / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == "StableDiffusionPipeline":
        extra |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = diffusers.DiffusionPipeline.from_pretrained(source.spec, torch_dtype=dtype, **extra)
    if prediction is None:
        return Loaded(pipe, "the model's scheduler config")
    _replace_scheduler(pipe, prediction_type=_DIFFUSERS_NAMES[prediction])
    return Loaded(pipe, "--prediction-type")


def _settle_single_file(pipe: Any, kind: CheckpointKind, prediction: Prediction | None) -> str:
    """Fix the scheduler (and an SD2 file's native size) to what the file is; returns where the
    prediction type came from."""
    if prediction is not None:
        source = "--prediction-type"
    elif kind.prediction is not None:
        prediction = kind.prediction
        source = (
            f"{kind.yaml.name}" if kind.yaml else ("its 'v_pred' key" if prediction == "v" else "its family")
        )
    else:
        prediction = "v" if predicts_v(pipe.unet) else "eps"
        source = "the UNet's response at t=999, the WebUI's test"
    changes: dict[str, Any] = {}
    configured = "v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "eps"
    if prediction != configured:
        changes["prediction_type"] = _DIFFUSERS_NAMES[prediction]
        if kind.family == "sd2":  # diffusers' SD2 default is the 768 px v model; the ε model is 512 px
            size = pipe.unet.config.sample_size
            pipe.unet.register_to_config(sample_size=size * 2 // 3 if prediction == "eps" else size * 3 // 2)
    if kind.zero_terminal_snr and not pipe.scheduler.config.get("rescale_betas_zero_snr"):
        changes |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    if changes:
        _replace_scheduler(pipe, **changes)
    return source


def _replace_scheduler(pipe: Any, **changes: Any) -> None:
    """The pipeline's scheduler with `changes` to its config; DDIM when its own class cannot rescale
    to zero terminal SNR (the training schedule is derived from this config)."""
    from diffusers import DDIMScheduler

    scheduler_class = type(pipe.scheduler)
    if "rescale_betas_zero_snr" in changes and (
        "rescale_betas_zero_snr" not in inspect.signature(scheduler_class.__init__).parameters
    ):
        scheduler_class = DDIMScheduler
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **changes)


@torch.no_grad()
def predicts_v(unet: torch.nn.Module) -> bool:
    """The WebUI's SD2 test (`is_using_v_parameterization_for_sd2`): fed a constant 0.5 at t=999,
    an ε model answers about its input, a v model about minus the image it sees, far below it."""
    weight = next(unet.parameters())
    like = {"device": weight.device, "dtype": weight.dtype}
    sample = torch.full((1, unet.config.in_channels, 8, 8), 0.5, **like)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, **like)
    timestep = torch.tensor([999], device=weight.device)
    output = unet(sample, timestep, encoder_hidden_states=context).sample
    return (output.float() - sample[:, : output.shape[1]].float()).mean().item() < -1
