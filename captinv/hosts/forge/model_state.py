"""What a run needs from Forge's model and memory manager, and how it is handed back.

Forge loads the selected checkpoint lazily (`forge_model_reload`, on the first generation) and
keeps three sets of patchers over one set of modules: `forge_objects_original` (the checkpoint),
`forge_objects_after_applying_lora` (clones carrying the last generation's LoRAs) and
`forge_objects` (what the current generation samples with, scripts' patches included). Which
clone's LoRA is merged into the shared weights is decided by the memory manager when it loads a
patcher, so a run trains on the base weights by loading the original patchers, and the next
generation's clones merge their LoRAs again when they load.

Forge builds its models and runs every generation under `torch.inference_mode()`, which makes
parameters inference tensors that autograd may not save; a run re-materialises them (in place,
the same `Parameter` objects) each time it loads the patchers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from backend import memory_management
from modules import sd_models, shared

from captinv.errors import UnsupportedModelError
from captinv.perfusion import editing

TRAINING_MEMORY_FACTOR = 3
"""Activations kept for backward, as a multiple of the memory Forge reserves for one inference
forward at the same size."""


def loaded_model():
    """The selected checkpoint, loaded now if the last generation has not (Forge loads lazily)."""
    try:
        model, _reloaded = sd_models.forge_model_reload()
    except ValueError as err:  # "You do not have any model!"
        raise UnsupportedModelError("No Stable Diffusion model is loaded; pick a checkpoint first.") from err
    return model


def active_networks(model) -> str:
    """The LoRAs merged by the last generation as `<lora:name:weight>` tags (Forge records the
    compiled list of [file, unet weight, text weight, online] it applied)."""
    try:
        targets = ast.literal_eval(getattr(model, "current_lora_hash", "[]"))
    except (ValueError, SyntaxError):
        return ""
    return " ".join(f"<lora:{Path(str(target[0])).stem}:{float(target[1]):g}>" for target in targets)


def own_tensors(root: torch.nn.Module) -> None:
    """Replace every inference tensor of `root` by an ordinary copy, so autograd can save it for
    backward. The tensor objects are replaced (an inference tensor whose `.data` is swapped still
    has no version counter, so views of it fail); a tensor registered twice (a tied weight) stays
    one tensor. Outside inference mode only; one tensor at a time, so the peak is one extra copy
    of the largest weight."""
    copies: dict[int, torch.Tensor] = {}

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in copies:
            clone = tensor.detach().clone()
            if isinstance(tensor, torch.nn.Parameter):
                clone = torch.nn.Parameter(clone, requires_grad=tensor.requires_grad)
            copies[id(tensor)] = clone
        return copies[id(tensor)]

    for module in root.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is not None and tensor.is_inference():
                    table[name] = copy(tensor)


class Residency:
    """Keeps a run's UNet and text encoder(s) loaded together through Forge's memory manager.

    Encoding the photos loads the VAE, which may evict them; every call that needs them checks
    first and loads both again (Forge's own text encoding would load the text encoder alone and
    could evict the UNet)."""

    def __init__(self, objects) -> None:
        self.patchers = [objects.unet, objects.clip.patcher]
        self.modules = [objects.unet.model, objects.clip.cond_stage_model]
        self.memory = 0

    def reserve(self, latent_shape: tuple[int, ...]) -> None:
        """Memory to keep free beside the models for training at this latent size."""
        self.memory = int(TRAINING_MEMORY_FACTOR * self.patchers[0].model.memory_required(latent_shape))

    def ensure(self, force: bool = False) -> None:
        loaded = memory_management.current_loaded_models
        if not force and all(memory_management.LoadedModel(p) in loaded for p in self.patchers):
            return
        memory_management.load_models_gpu(self.patchers, memory_required=self.memory)
        for module in self.modules:
            own_tensors(module)
        online = [m for module in self.modules for m in module.modules() if hasattr(m, "forge_online_loras")]
        if online:
            raise UnsupportedModelError(
                "The active LoRAs are applied online (low-bit UNet storage), which cannot be trained "
                "through; untick 'Keep active networks' or choose a 16/32-bit UNet storage."
            )


@contextmanager
def run_objects(model, keep_networks: bool) -> Iterator[object]:
    """The patchers a run trains with (the checkpoint's, or the last generation's LoRA clones if
    `keep_networks`), current on the model while inside; the model's own are put back after."""
    before = model.forge_objects
    objects = model.forge_objects_after_applying_lora if keep_networks else model.forge_objects_original
    model.forge_objects = objects.shallow_copy()
    editing.remove(objects.unet.model.diffusion_model)  # left by a generation that failed early
    try:
        yield objects
    finally:
        model.forge_objects = before


def clip_skip_layers() -> int:
    return int(shared.opts.CLIP_stop_at_last_layers)
