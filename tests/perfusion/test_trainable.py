"""Training mode: V targets learn, K targets stay locked, i* arrives per step with a straight-through gradient."""

from __future__ import annotations

import pytest
import torch

from captinv.perfusion.editing import applied, install, remove
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import cross_attention_layers
from captinv.perfusion.rank1 import straight_through
from captinv.perfusion.trainable import TrainableConcept
from tests.perfusion import models

D = models.CONTEXT
CONCEPT_POSITION = 2


@pytest.fixture(scope="module")
def unet():
    return models.small_unet().requires_grad_(False)


@pytest.fixture
def setup(unet):
    draw = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=draw, dtype=torch.float64)
    factor = torch.linalg.cholesky(a @ a.T + 0.5 * torch.eye(D, dtype=torch.float64))
    i_super = torch.randn(D, generator=draw, dtype=torch.float64)
    encoder = (
        torch.randn(D, D, generator=draw, dtype=torch.float64) / D**0.5
    )  # stands in for the text encoder
    return TrainableConcept(cross_attention_layers(unet), i_super, factor), i_super, encoder


def _step(unet, trainable, embedding, encoder, *, per_token_gradient: bool, i_star_gradient: bool = True):
    """Encode a 2-prompt batch with the concept row, set i*, run the UNet and backpropagate a loss."""
    draw = torch.Generator().manual_seed(1)
    context = torch.randn(2, 5, D, generator=draw, dtype=torch.float64)
    encoded = embedding @ encoder.T
    context[:, CONCEPT_POSITION] = encoded if per_token_gradient else encoded.detach()
    batch_mean = context[:, CONCEPT_POSITION].mean(0) if per_token_gradient else encoded
    used = straight_through(trainable.i_super, batch_mean)
    trainable.set_input(used if i_star_gradient else used.detach())
    sample = torch.randn(2, 4, 8, 8, generator=draw, dtype=torch.float64)
    out = unet(sample, torch.tensor([5, 600]), encoder_hidden_states=context).sample
    out.square().mean().backward()


def test_only_the_value_targets_are_parameters(unet, setup):
    trainable, i_super, _ = setup
    layers = cross_attention_layers(unet)
    params = list(trainable.parameters())
    assert len(params) == len(layers) and all(p.requires_grad for p in params)
    for layer, target in zip(layers, params):
        torch.testing.assert_close(target.double(), layer.to_v.weight @ i_super, rtol=1e-6, atol=1e-6)
    assert {name for name, _ in trainable.named_buffers()} == {"i_super"}


def test_no_float64_reaches_the_device_for_a_float32_model(unet):
    """MPS has no float64: the covariance factor stays on the CPU (it is no module state), and the
    per-step tensors the wrapped projections get are float32, gradient path included."""
    draw = torch.Generator().manual_seed(2)
    a = torch.randn(D, D, generator=draw, dtype=torch.float64)
    factor = torch.linalg.cholesky(a @ a.T + torch.eye(D, dtype=torch.float64))
    trainable = TrainableConcept(cross_attention_layers(unet), torch.randn(D, generator=draw), factor)
    assert {t.dtype for t in trainable.state_dict().values()} == {torch.float32}
    moved = []
    original = torch.nn.Module.to

    def record(module, *args, **kwargs):
        moved.append({t.dtype for t in module.state_dict().values()})
        return original(module, *args, **kwargs)

    trainable.to = record.__get__(trainable)
    trainable.to("cpu")
    assert moved == [{torch.float32}] and trainable.covariance_factor.dtype == torch.float64
    i_star = torch.randn(D, requires_grad=True)
    trainable.set_input(i_star * 1.0)
    shared = trainable.shared(torch.device("cpu"), torch.float32)
    assert {getattr(shared, f).dtype for f in ("i_star", "direction", "mix", "beta", "tau", "i_super")} == {
        torch.float32
    }
    shared.direction.sum().backward()  # the float64 solve on the CPU still passes the gradient on
    assert i_star.grad is not None and i_star.grad.dtype == torch.float32 and i_star.grad.abs().sum() > 0
    assert trainable.shared(torch.device("cpu"), torch.float32) is shared  # placed once per step


def test_value_targets_start_from_any_linear_like_projection(setup):
    """Forge's projections are no nn.Linear; the start W_V i_super comes through their forward."""
    from tests.perfusion.test_editing import ForgeLinear

    _, i_super, _ = setup
    unet = models.small_unet()
    for module in unet.modules():
        if getattr(module, "is_cross_attention", False):
            module.to_k, module.to_v = ForgeLinear(module.to_k), ForgeLinear(module.to_v)
    layers = cross_attention_layers(unet)
    factor = torch.eye(D, dtype=torch.float64)
    trainable = TrainableConcept(layers, i_super.float(), factor)
    for layer, target in zip(layers, trainable.v_targets):
        torch.testing.assert_close(target, layer.to_v.weight @ i_super.float(), rtol=1e-6, atol=1e-6)


def test_a_step_trains_values_and_embedding_while_keys_and_weights_stay(unet, setup):
    trainable, i_super, encoder = setup
    layers = cross_attention_layers(unet)
    weights = [layer.to_k.weight.clone() for layer in layers]
    embedding = torch.randn(D, dtype=torch.float64, requires_grad=True)
    install(unet, trainable)
    try:
        _step(unet, trainable, embedding, encoder, per_token_gradient=True)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.parameters())
        assert embedding.grad.abs().sum() > 0
        assert all(layer.to_k.weight.grad is None and layer.to_v.weight.grad is None for layer in layers)
        torch.optim.AdamW(trainable.parameters(), lr=0.03, weight_decay=0.0).step()
        with torch.no_grad():
            for layer, weight in zip(layers, weights):
                assert torch.equal(layer.to_k.weight, weight)
                locked = 0.9241418199787566 * (weight @ i_super)  # σ(2.5) at the training gate β=0.75, τ=0.1
                torch.testing.assert_close(layer.to_k(i_super), locked, rtol=0, atol=1e-10)
                assert not torch.allclose(
                    layer.to_v(i_super), 0.9241418199787566 * (layer.to_v.weight @ i_super)
                )
    finally:
        remove(unet)


def test_the_straight_through_i_star_alone_carries_gradient_to_the_embedding(unet, setup):
    trainable, _, encoder = setup
    install(unet, trainable)
    try:
        embedding = torch.randn(D, dtype=torch.float64, requires_grad=True)
        _step(unet, trainable, embedding, encoder, per_token_gradient=False)
        assert embedding.grad is not None and embedding.grad.abs().sum() > 0
        cut = torch.randn(D, dtype=torch.float64, requires_grad=True)
        _step(unet, trainable, cut, encoder, per_token_gradient=False, i_star_gradient=False)
        assert cut.grad is None
    finally:
        remove(unet)


def test_the_exported_concept_reproduces_the_training_forward(unet, setup):
    trainable, i_super, _ = setup
    i_star = i_super + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        for target in trainable.parameters():
            target.add_(torch.randn(target.shape, dtype=target.dtype))
    context = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    context[1, 1] = i_star
    layers = install(unet, trainable)
    try:
        trainable.set_input(i_star)
        with torch.no_grad():
            trained = [torch.cat([layer.to_k(context), layer.to_v(context)], -1) for layer in layers]
    finally:
        remove(unet)
    concept = trainable.to_concept("sks", "toy", {"emb_params": torch.zeros(1, 4)}, i_star, {"steps": "400"})
    assert concept.metadata == {"train_beta": "0.75", "train_tau": "0.1", "steps": "400"}
    with torch.no_grad(), applied(unet, concept, beta=0.75, tau=0.1):
        for layer, expected in zip(layers, trained):
            torch.testing.assert_close(
                torch.cat([layer.to_k(context), layer.to_v(context)], -1), expected, rtol=1e-5, atol=1e-5
            )


def test_a_step_without_an_input_is_refused(unet, setup):
    trainable, _, _ = setup
    install(unet, trainable)
    try:
        with pytest.raises(PerfusionError, match="set_input"):
            cross_attention_layers(unet)[0].to_v(torch.zeros(1, D, dtype=torch.float64))
    finally:
        remove(unet)
