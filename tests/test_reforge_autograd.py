"""reForge's host makes a model that generations ran under inference mode trainable, and checkpoints
ldm_patched's blocks itself: both with torch alone, tested here without a reForge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captinv.hosts.reforge.autograd import checkpointing, materialise


def _generated(module: nn.Linear) -> nn.Linear:
    """`module` as a reForge generation leaves it: a LoRA merge replaced its weight by a Parameter
    made under inference mode, a device move replaced its bias's data, a buffer was made there."""
    with torch.inference_mode():
        module.weight = nn.Parameter(module.weight * 1.5, requires_grad=False)
        module.bias.data = module.bias.data.clone()
        module.register_buffer("scale", torch.full((module.out_features,), 2.0))
    return module


def _loss(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return (module(x) * module.scale).square().sum()


def test_weights_left_by_inference_mode_backpropagate_after_materialise():
    module = _generated(nn.Linear(4, 3))
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        _loss(module, x).backward()
    values = {name: tensor.clone() for name, tensor in module.state_dict().items()}

    materialise(module)

    _loss(module, x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(torch.equal(values[name], tensor) for name, tensor in module.state_dict().items())
    assert not module.weight.requires_grad and module.bias.requires_grad  # flags kept


def test_materialise_keeps_ordinary_parameters():
    module = nn.Linear(4, 3)
    weight = module.weight
    materialise(module)
    assert module.weight is weight


class _Block(nn.Module):
    """A block that, like ldm_patched's, reads a shared transformer_options dict."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.linear(x)) * transformer_options["scale"]


def _gradient(block: _Block, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    options = {"scale": 3.0}
    y = block(x, transformer_options=options)
    options["scale"] = -1.0  # the UNet moves on to its next block before backward
    y.sum().backward()
    return x.grad


def test_checkpointing_recomputes_in_backward_with_what_the_call_saw():
    block, x = _Block(), torch.randn(2, 4)
    plain = _gradient(block, x)
    assert block.calls == 1

    with checkpointing([block]):
        block.calls = 0
        checkpointed = _gradient(block, x)
        assert block.calls == 2  # once forward, once again in backward

    assert torch.equal(checkpointed, plain)
    block.calls = 0
    _gradient(block, x)
    assert block.calls == 1 and "forward" not in block.__dict__  # the class forward again


def test_checkpointing_keeps_a_foreign_instance_forward():
    block = _Block()
    foreign = block.forward
    block.forward = foreign
    with checkpointing([block]):
        assert block.forward is not foreign
    assert block.__dict__["forward"] is foreign
