"""What backward needs from a model that reForge runs under inference mode, with torch alone
(no reForge import, so it is tested without one).

reForge runs every generation under `torch.inference_mode()`: weights a generation moves to a
device or merges a LoRA into are inference tensors, which autograd refuses to save for backward.
And A1111's gradient checkpointing patches `ldm` classes that reForge never runs, so the blocks
reForge does run are wrapped here, per instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint


@torch.no_grad()
def materialise(module: torch.nn.Module) -> None:
    """Replace inference tensors by ordinary copies of the same values. A Parameter created under
    inference mode (a LoRA merge replaces the layer's Parameter) has no version counter even after
    its `.data` is replaced, so each one becomes a new Parameter; nothing keeps the old objects
    but the module (the patchers back up the weights they replace, not their replacements)."""
    for child in module.modules():
        for name, parameter in list(child._parameters.items()):
            if parameter is not None and parameter.is_inference():
                child._parameters[name] = torch.nn.Parameter(
                    parameter.clone(), requires_grad=parameter.requires_grad
                )
        for name, buffer in list(child._buffers.items()):
            if buffer is not None and buffer.is_inference():
                child._buffers[name] = buffer.clone()


@contextmanager
def checkpointing(blocks: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Recompute each block's activations in backward while inside (torch's non-reentrant
    checkpoint around the block's forward); every block's own forward is back on exit."""
    previous = {block: block.__dict__.get("forward") for block in blocks}  # an instance forward is kept
    for block in previous:
        block.forward = _checkpointed(block.forward)
    try:
        yield
    finally:
        for block, forward in previous.items():
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def _checkpointed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(*args, **kwargs):
        # ldm_patched's UNet rewrites one transformer_options dict as it goes through its blocks:
        # the recomputation in backward must see what this call saw
        if isinstance(kwargs.get("transformer_options"), dict):
            kwargs["transformer_options"] = dict(kwargs["transformer_options"])
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run
