"""What the last generation leaves in reForge's model, and how a run gets the base model.

reForge's builtin Lora does not patch torch layers as A1111's does. `<lora:...>` clones the
UNet and CLIP patchers with the LoRA's weight patches and keeps them as
`sd_model.forge_objects_after_applying_lora`; the memory manager merges a clone's patches into
the modules all clones share when it loads that clone, and unmerges them when it loads another.
`forge_objects_original` holds the patchers as loaded from the checkpoint, and `forge_objects`
is the set reForge's text wrappers and samplers load. A run makes the original set (or, to keep
the networks, the LoRA set) current, so loading it for the run unmerges (or merges) the LoRA,
and puts the user's set back after: the next generation loads its own clones again.

Hypernetworks do nothing in reForge (its attention never applies them), so they are left alone.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from modules import sd_models, shared

from captinv.hosts.a1111.model_state import ActiveNetworks
from captinv.perfusion import editing


def active_loras(model) -> ActiveNetworks:
    """The LoRAs of the last generation. reForge's `load_networks` does not record multipliers on
    the networks; they are in the model's `current_lora_hash`, `str([[file, unet, te], ...])`."""
    networks = sys.modules.get("networks")  # the builtin Lora extension's module; None if disabled
    try:
        targets = ast.literal_eval(getattr(model, "current_lora_hash", "[]"))
    except (ValueError, SyntaxError):
        targets = []
    strengths = {filename: (float(unet), float(te)) for filename, unet, te in targets}
    loras = []
    for net in networks.loaded_networks if networks else []:
        unet, te = strengths.get(net.network_on_disk.filename, (1.0, 1.0))
        loras.append((net.mentioned_name or net.name, te, unet, None))
    return ActiveNetworks(tuple(loras), ())


@contextmanager
def base_model(keep_networks: bool) -> Iterator[ActiveNetworks]:
    """The selected checkpoint's own patchers as `forge_objects` while inside (with
    `keep_networks`, the ones with the last generation's LoRAs); the user's set again on exit."""
    sd_models.reload_model_weights()  # the selected checkpoint, not a refiner left loaded
    model = shared.sd_model
    if model is None:  # refused by the caller's check
        yield ActiveNetworks((), ())
        return
    editing.remove(model.model.diffusion_model)  # left by a generation that failed early
    current = model.forge_objects
    chosen = model.forge_objects_after_applying_lora if keep_networks else model.forge_objects_original
    model.forge_objects = chosen.shallow_copy()
    try:
        yield active_loras(model)
    finally:
        model.forge_objects = current
