"""What the last generation leaves in AUTOMATIC1111's model, and how a run gets the base model.

After a txt2img with `<lora:x:1>` the builtin Lora extension keeps that LoRA merged into
the UNet and text-encoder weights and keeps it listed as loaded, so any later forward
(a training step) sees base+LoRA; hypernetworks stay loaded the same way; after a
generation with the Refiner, `shared.sd_model` is the refiner until the next
`process_images`; a generation that failed before its deactivate can leave Perfusion
wrappers. `base_model` undoes all of that for a run with the WebUI's own functions and
puts the networks back afterwards, so the next generation finds what it left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from modules import sd_models, shared

from captinv.perfusion import editing


@dataclass(frozen=True)
class ActiveNetworks:
    """The LoRAs and hypernetworks the last generation left loaded, as `<kind:name:weight>` tags."""

    loras: tuple[tuple[str, float, float, int | None], ...]  # (name, te, unet, dyn_dim)
    hypernetworks: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        tags = [f"<lora:{name}:{unet:g}>" for name, _te, unet, _dim in self.loras]
        tags += [f"<hypernet:{name}:{weight:g}>" for name, weight in self.hypernetworks]
        return " ".join(tags)


def _lora_module():
    """The builtin Lora extension's `networks` module; None when that extension is disabled.
    Its folder is on sys.path only while its scripts load, so it is found by its module name."""
    return sys.modules.get("networks")


def active_networks() -> ActiveNetworks:
    networks = _lora_module()
    loras = tuple(
        (net.mentioned_name or net.name, net.te_multiplier, net.unet_multiplier, net.dyn_dim)
        for net in (networks.loaded_networks if networks else [])
    )
    hypernetworks = tuple((h.name, _multiplier(h)) for h in getattr(shared, "loaded_hypernetworks", []))
    return ActiveNetworks(loras, hypernetworks)


def _multiplier(hypernetwork) -> float:
    """A hypernetwork keeps its strength on each of its layers (`set_multiplier`)."""
    layers = [layer for group in hypernetwork.layers.values() for layer in group]
    return float(getattr(layers[0], "multiplier", 1.0)) if layers else 1.0


def _load(active: ActiveNetworks) -> None:
    """Make `active` the loaded networks, with the WebUI's own loaders."""
    from modules.hypernetworks import hypernetwork

    networks = _lora_module()
    if networks is not None:
        names, te, unet, dims = (list(column) for column in zip(*active.loras)) if active.loras else ([],) * 4
        networks.load_networks(names, te, unet, dims)
    names, weights = (
        (list(column) for column in zip(*active.hypernetworks)) if active.hypernetworks else ([], [])
    )
    hypernetwork.load_hypernetworks(names, weights)


@torch.no_grad()
def _restore_merged_weights(model: torch.nn.Module) -> None:
    """With no network loaded, the Lora extension restores a layer's backed-up base weights the
    next time that layer runs; run that restore now for every layer, so even code that reads
    weights directly (a token-embedding table) sees the base checkpoint."""
    networks = _lora_module()
    if networks is None:
        return
    for module in model.modules():
        if getattr(module, "network_current_names", ()):
            networks.network_apply_weights(module)


@contextmanager
def base_model(keep_networks: bool) -> Iterator[ActiveNetworks]:
    """The selected checkpoint as it is on disk while inside (or with the active networks, if
    `keep_networks`); the networks that were active are loaded again on exit."""
    sd_models.reload_model_weights()  # the selected checkpoint, not a refiner left loaded
    model = shared.sd_model
    if model is not None:
        editing.remove(model.model.diffusion_model)  # left by a generation that failed early
    active = active_networks()
    if keep_networks or not (active.loras or active.hypernetworks):
        yield active
        return
    _load(ActiveNetworks((), ()))
    _restore_merged_weights(shared.sd_model)
    try:
        yield active
    finally:
        _load(active)
