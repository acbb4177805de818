"""The wrapped to_k / to_v of a tiny SD1-structured diffusers UNet (float64 unless stated)."""

from __future__ import annotations

import pytest
import torch

from captinv.errors import UnsupportedModelError
from captinv.perfusion.editing import (
    ConceptSource,
    applied,
    install,
    is_installed,
    lock_keys,
    remove,
    superclass_prompt,
)
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import cross_attention_layers
from tests.perfusion import models

D = models.CONTEXT


def _spd(seed: int) -> torch.Tensor:
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(D, dtype=torch.float64)


@pytest.fixture(scope="module")
def unet():
    return models.sd1_like()


@pytest.fixture(scope="module")
def layers(unet):
    return cross_attention_layers(unet)


@pytest.fixture(scope="module")
def covariance():
    return _spd(7)


@pytest.fixture(scope="module")
def concept(layers, covariance):
    i_star = torch.randn(D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return models.random_concept(
        layers, seed=1, i_star=i_star, c_inv_i_star=torch.linalg.solve(covariance, i_star)
    )


def _orthogonal(concept, seed: int) -> torch.Tensor:
    """Token encodings with s(e) = uᵀe = 0."""
    e = torch.randn(3, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = concept.direction()
    return e - (e @ u)[:, None] * concept.i_star


def test_open_gate_sends_i_star_to_the_value_target_and_locks_the_key(unet, layers, concept):
    super_keys = {layer.name: layer.to_k(concept.i_super).detach() for layer in layers}
    with torch.no_grad(), applied(unet, concept, beta=0.5, tau=1e-6):
        for layer in layers:
            torch.testing.assert_close(
                layer.to_v(concept.i_star), concept.v_targets[layer.name], rtol=0, atol=1e-12
            )
            torch.testing.assert_close(layer.to_k(concept.i_star), super_keys[layer.name], rtol=0, atol=1e-12)
    with torch.no_grad(), applied(unet, concept, beta=0.75, tau=0.1):  # the training gate: σ(2.5) = 0.924
        for layer in layers:
            expected = 0.9241418199787566 * super_keys[layer.name]
            torch.testing.assert_close(layer.to_k(concept.i_star), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("beta", "tau"), [(0.5, 1e-6), (0.75, 0.1), (0.7, 0.15), (100.0, 0.15), (-1.0, 0.5)])
def test_c_inverse_orthogonal_inputs_keep_w_e(unet, layers, concept, beta, tau):
    """The W-part is untouched for any β, τ; only the gate's value at s = 0, σ(−β/τ), adds o* (≈0 for β/τ ≫ 1)."""
    e = _orthogonal(concept, seed=5)
    leak = float(torch.sigmoid(torch.tensor(-beta / tau, dtype=torch.float64)))
    stock = {
        layer.name: (layer.to_k(e).detach(), layer.to_v(e).detach(), layer.to_k(concept.i_super))
        for layer in layers
    }
    with torch.no_grad(), applied(unet, concept, beta=beta, tau=tau):
        for layer in layers:
            k, v, super_key = stock[layer.name]
            torch.testing.assert_close(
                layer.to_v(e), v + leak * concept.v_targets[layer.name], rtol=0, atol=1e-12
            )
            torch.testing.assert_close(layer.to_k(e), k + leak * super_key, rtol=0, atol=1e-12)
            if beta / tau > 40:
                torch.testing.assert_close(layer.to_v(e), v, rtol=0, atol=1e-12)


def test_a_closed_gate_is_not_the_identity(unet, layers, concept):
    with torch.no_grad(), applied(unet, concept, beta=100.0, tau=0.15):
        for layer in layers:
            assert layer.to_v.weight.mv(concept.i_star).abs().max() > 0.1
            torch.testing.assert_close(
                layer.to_v(concept.i_star),
                torch.zeros(layer.to_v.out_features, dtype=torch.float64),
                rtol=0,
                atol=1e-12,
            )


def test_only_the_shape_of_c_matters_and_the_stored_c_inverse_i_star_matches_full_c(
    unet, layers, concept, covariance
):
    rescaled = models.random_concept(
        layers,
        seed=1,
        i_star=concept.i_star,
        c_inv_i_star=torch.linalg.solve(123.0 * covariance, concept.i_star),
    )
    e = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    e[0, 2] = concept.i_star

    def outputs(c):
        with torch.no_grad(), applied(unet, c, beta=0.6, tau=0.15):
            return [torch.cat([layer.to_k(e), layer.to_v(e)], -1) for layer in layers]

    stored = outputs(concept)
    for ours, theirs in zip(stored, outputs(rescaled)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    c_inv = torch.linalg.inv(covariance)
    s = (e @ c_inv @ concept.i_star / (concept.i_star @ c_inv @ concept.i_star))[..., None]
    g = torch.sigmoid((s - 0.6) / 0.15)
    for layer, ours in zip(layers, stored):
        w_k, w_v = layer.to_k.weight, layer.to_v.weight
        key = e @ w_k.T - s * (w_k @ concept.i_star) + g * (w_k @ concept.i_super)
        value = e @ w_v.T - s * (w_v @ concept.i_star) + g * concept.v_targets[layer.name]
        torch.testing.assert_close(ours, torch.cat([key, value], -1), rtol=0, atol=1e-11)


def _unet_output(unet, context):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), encoder_hidden_states=context).sample


def test_off_means_unwrapped_and_the_unet_is_bit_identical_to_stock(concept):
    unet = models.small_unet()
    layers = cross_attention_layers(unet)
    concept = models.random_concept(layers, seed=1, i_star=concept.i_star, c_inv_i_star=concept.c_inv_i_star)
    context = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    context[:, 3] = concept.i_star
    stock = _unet_output(unet, context)
    with applied(unet, concept):
        assert is_installed(unet)
        edited = _unet_output(unet, context)
    assert not torch.allclose(edited, stock, atol=1e-3)
    assert torch.equal(_unet_output(unet, context), stock)
    assert not is_installed(unet)
    assert all("forward" not in m.__dict__ for layer in layers for m in (layer.to_k, layer.to_v))
    with pytest.raises(RuntimeError, match="inside"), applied(unet, concept):
        raise RuntimeError("inside")
    assert torch.equal(_unet_output(unet, context), stock)


def test_install_is_idempotent_and_remove_leaves_no_trace(unet, layers, concept, monkeypatch):
    calls = []
    original = torch.nn.Linear.forward
    monkeypatch.setattr(
        torch.nn.Linear, "forward", lambda self, x: calls.append(x.shape) or original(self, x)
    )
    source = ConceptSource([concept], beta=[0.7], tau=[0.15], exact=False)
    e = torch.randn(4, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    install(unet, source)
    once = layers[0].to_v(e)
    install(unet, source)
    calls.clear()
    twice = layers[0].to_v(e)
    assert len(calls) == 1  # one class-forward call: the tokens plus the appended i* and zero rows
    assert torch.equal(once, twice)
    assert remove(unet) == 2 * len(layers)
    assert remove(unet) == 0
    assert all("forward" not in m.__dict__ for layer in layers for m in (layer.to_k, layer.to_v))


def test_wrappers_compose_with_a_class_level_linear_patch(unet, layers, concept, monkeypatch):
    """The WebUI's LoRA replaces torch.nn.Linear.forward; the edit must use the LoRA-modified W throughout."""
    draw = torch.Generator().manual_seed(11)
    deltas = {
        id(m): 0.1
        * torch.randn(m.out_features, 1, generator=draw, dtype=torch.float64)
        @ torch.randn(1, D, generator=draw, dtype=torch.float64)
        for layer in layers
        for m in (layer.to_k, layer.to_v)
    }
    original = torch.nn.Linear.forward

    def lora_forward(self, x):
        delta = deltas.get(id(self))
        return original(self, x) if delta is None else original(self, x) + x @ delta.T

    e = _orthogonal(concept, seed=6)
    with torch.no_grad(), applied(unet, concept, beta=0.5, tau=1e-6):
        monkeypatch.setattr(torch.nn.Linear, "forward", lora_forward)  # patched after the wrappers went in
        for layer in layers:
            lora_k = layer.to_k.weight + deltas[id(layer.to_k)]
            lora_v = layer.to_v.weight + deltas[id(layer.to_v)]
            torch.testing.assert_close(layer.to_v(e), e @ lora_v.T, rtol=0, atol=1e-12)
            torch.testing.assert_close(
                layer.to_v(concept.i_star), concept.v_targets[layer.name], rtol=0, atol=1e-12
            )
            torch.testing.assert_close(
                layer.to_k(concept.i_star), lora_k @ concept.i_super, rtol=0, atol=1e-12
            )


def test_a_biased_projection_keeps_its_bias_and_locks_to_the_superclass_output(concept):
    """Only W is edited: at an open gate to_v(i*) = o* + b, and to_k(i*) is exactly the superclass's key."""
    unet = models.sd1_like()
    layer = cross_attention_layers(unet)[0]
    for module in (layer.to_k, layer.to_v):
        module.bias = torch.nn.Parameter(torch.randn(module.out_features, dtype=torch.float64))
    with torch.no_grad():
        super_key = layer.to_k(concept.i_super)
        with applied(unet, concept, beta=0.5, tau=1e-6):
            torch.testing.assert_close(layer.to_k(concept.i_star), super_key, rtol=0, atol=1e-12)
            value = concept.v_targets[layer.name] + layer.to_v.bias
            torch.testing.assert_close(layer.to_v(concept.i_star), value, rtol=0, atol=1e-12)


def test_a_foreign_instance_forward_is_called_and_restored(unet, layers, concept):
    module = layers[0].to_v
    doubled = lambda x: 2.0 * torch.nn.Linear.forward(module, x)  # noqa: E731
    module.forward = doubled
    try:
        e = _orthogonal(concept, seed=8)
        with torch.no_grad(), applied(unet, concept, beta=0.5, tau=1e-6):
            torch.testing.assert_close(module(e), 2.0 * e @ module.weight.T, rtol=0, atol=1e-12)
        assert module.__dict__["forward"] is doubled
    finally:
        del module.forward


def test_two_concepts_each_map_their_own_input_to_their_own_targets(unet, layers, concept, covariance):
    i_star = concept.i_star + torch.randn(D, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    second = models.random_concept(
        layers, seed=2, name="other", i_star=i_star, c_inv_i_star=torch.linalg.solve(covariance, i_star)
    )
    cross = [float(second.direction() @ concept.i_star), float(concept.direction() @ second.i_star)]
    assert all(0.05 < abs(c) < 0.5 for c in cross)  # correlated, yet each gate stays shut for the other
    with torch.no_grad(), applied(unet, [concept, second], beta=0.5, tau=1e-6, projection="exact"):
        for layer in layers:
            for c in (concept, second):
                torch.testing.assert_close(layer.to_v(c.i_star), c.v_targets[layer.name], rtol=0, atol=1e-10)
                torch.testing.assert_close(
                    layer.to_k(c.i_star), layer.to_k.weight @ c.i_super, rtol=0, atol=1e-10
                )
        exact = layers[0].to_v(concept.i_star)
    with torch.no_grad(), applied(unet, [concept, second], beta=0.5, tau=1e-6):
        assert not torch.allclose(layers[0].to_v(concept.i_star), exact, atol=1e-3)


def test_fp16_context_gives_fp16_output_close_to_a_float64_reference(concept):
    """Within 1e-3 of the output scale: about two fp16 roundings (stock fp16 alone costs one, 4.9e-4)."""
    half = models.sd1_like(torch.float16)
    context = torch.randn(2, 154, D, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    context[0, 5] = concept.i_star  # rows: [cond; uncond], columns: two 77-token chunks
    context = context.half()
    e = context.double()
    s = (e @ concept.direction())[..., None]
    g = torch.sigmoid((s - 0.6) / 0.15)
    with torch.no_grad(), applied(half, concept, beta=0.6, tau=0.15) as layers:
        for layer in layers:
            out_k, out_v = layer.to_k(context), layer.to_v(context)
            assert out_k.dtype == out_v.dtype == torch.float16 and out_v.shape == (
                2,
                154,
                layer.to_v.out_features,
            )
            w_k, w_v = layer.to_k.weight.double(), layer.to_v.weight.double()
            key = e @ w_k.T - s * (w_k @ concept.i_star) + g * (w_k @ concept.i_super)
            value = e @ w_v.T - s * (w_v @ concept.i_star) + g * concept.v_targets[layer.name]
            assert (out_k.double() - key).abs().max() < 1e-3 * key.abs().max()
            assert (out_v.double() - value).abs().max() < 1e-3 * value.abs().max()


def test_autocast_does_not_lower_the_precision_of_the_edit(concept):
    """Under a trainer's autocast W runs in bf16, but the gate and the o* term stay float32."""
    unet = models.sd1_like(torch.float32)
    with torch.no_grad(), applied(unet, concept, beta=0.5, tau=1e-6) as layers:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = {layer.name: layer.to_v(concept.i_star.float()) for layer in layers}
        for name, out in outputs.items():
            assert out.dtype == torch.float32
            torch.testing.assert_close(out.double(), concept.v_targets[name], rtol=0, atol=1e-5)


def test_knobs_are_checked(unet, concept):
    with pytest.raises(PerfusionError, match="2 β values for 1"), applied(unet, concept, beta=[0.5, 0.6]):
        pass
    with pytest.raises(PerfusionError, match="positive"), applied(unet, concept, tau=0.0):
        pass
    with pytest.raises(PerfusionError, match="projection"), applied(unet, concept, projection="cholesky"):
        pass
    with (
        applied(unet, concept),
        pytest.raises(PerfusionError, match="already active"),
        applied(unet, concept),
    ):
        pass
    assert not is_installed(unet)


def test_removing_works_on_a_unet_whose_layout_perfusion_refuses(unet, concept):
    """The WebUI clears edits before every generation, on whatever model is loaded."""
    from torch import nn

    stranger = nn.Sequential(nn.Linear(2, 2))
    assert remove(stranger) == 0 and not is_installed(stranger)
    with applied(unet, concept):
        holder = nn.Module()
        holder.unet, holder.other = unet, stranger  # a layout cross_attention_layers would refuse
        assert is_installed(holder)
        assert remove(holder) == 2 * len(concept.v_targets)
    assert not is_installed(unet)


def test_knobs_that_are_no_numbers_are_refused(unet, concept):
    for beta, tau in ((float("nan"), 0.15), (0.7, float("inf")), (0.7, -0.1)):
        with pytest.raises(PerfusionError, match="finite"), applied(unet, concept, beta=beta, tau=tau):
            pass
    assert not is_installed(unet)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_extra_arguments_reach_the_projection_as_diffusers_0_25_passes_a_lora_scale(concept):
    """diffusers 0.25-0.26 call `attn.to_k(x, scale)` on a LoRACompatibleLinear."""
    lora_module = pytest.importorskip("diffusers.models.lora")  # gone in diffusers 1.0, as is the scale
    LoRACompatibleLinear, LoRALinearLayer = lora_module.LoRACompatibleLinear, lora_module.LoRALinearLayer  # noqa: N806

    unet = models.sd1_like()
    layer = cross_attention_layers(unet)[0]
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    for kind in ("to_k", "to_v"):
        plain = getattr(attention, kind)
        lora = LoRACompatibleLinear(plain.in_features, plain.out_features, bias=False).double()
        lora.weight.data.copy_(plain.weight.data)
        lora.set_lora_layer(LoRALinearLayer(plain.in_features, plain.out_features, rank=2).double())
        torch.nn.init.normal_(lora.lora_layer.up.weight, generator=torch.Generator().manual_seed(3))
        setattr(attention, kind, lora)
    layer = cross_attention_layers(unet)[0]
    e = _orthogonal(concept, seed=7)
    with torch.no_grad(), applied(unet, concept, beta=0.5, tau=1e-6):
        for scale in (0.0, 0.5):
            stock_v = LoRACompatibleLinear.forward(layer.to_v, e, scale)
            torch.testing.assert_close(layer.to_v(e, scale), stock_v, rtol=0, atol=1e-12)
            super_key = LoRACompatibleLinear.forward(layer.to_k, concept.i_super, scale)
            torch.testing.assert_close(layer.to_k(concept.i_star, scale=scale), super_key, rtol=0, atol=1e-12)
        assert not torch.allclose(layer.to_v(e, 0.0), layer.to_v(e, 0.5))


class ForgeLinear(torch.nn.Module):
    """Forge's `ForgeOperations.Linear`: not an nn.Linear, a plain module with the same attributes
    whose forward casts the weight to the input's dtype on every call."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(linear.weight.detach().float().clone())
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), None)


def test_forge_style_projections_are_edited_like_linears(concept):
    reference, forge = models.sd1_like(), models.sd1_like()
    for module in forge.modules():
        if hasattr(module, "to_k") and hasattr(module, "to_q") and module.is_cross_attention:
            module.to_k, module.to_v = ForgeLinear(module.to_k), ForgeLinear(module.to_v)
    e = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e[0, 1] = concept.i_star
    outputs = []
    for unet in (reference, forge):
        with torch.no_grad(), applied(unet, concept, beta=0.6, tau=0.15) as layers:
            assert all(
                type(layer.to_v) is (ForgeLinear if unet is forge else torch.nn.Linear) for layer in layers
            )
            outputs.append([torch.cat([layer.to_k(e), layer.to_v(e)], -1) for layer in layers])
        assert not is_installed(unet)
    for ours, theirs in zip(*outputs):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-6)
    stranger = models.sd1_like()
    stranger.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k = torch.nn.Identity()
    with pytest.raises(UnsupportedModelError, match="no linear to_k/to_v"):
        cross_attention_layers(stranger)


def test_the_edit_runs_where_autocast_does_not_know_the_device(unet, layers, concept, monkeypatch):
    """torch < 2.5 raises for `torch.autocast('mps', enabled=False)`; a stand-in raises for 'cpu'."""
    e = torch.randn(3, D, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    with torch.no_grad(), applied(unet, concept):
        expected = [layer.to_v(e) for layer in layers]
        real = torch.autocast

        def unsupported(device_type, *args, **kwargs):
            if device_type == "cpu":
                raise RuntimeError("User specified an unsupported autocast device_type 'cpu'")
            return real(device_type, *args, **kwargs)

        monkeypatch.setattr(torch, "autocast", unsupported)
        for layer, before in zip(layers, expected):
            assert torch.equal(layer.to_v(e), before)


def test_inference_constants_reach_the_device_in_the_compute_dtype(concept):
    """Made in float64 on the CPU, converted before they move (MPS cannot hold float64)."""
    source = ConceptSource([concept], beta=[0.7], tau=[0.15], exact=False)
    shared = source.shared(torch.device("cpu"), torch.float32)
    assert {getattr(shared, f).dtype for f in ("i_star", "direction", "mix", "beta", "tau", "i_super")} == {
        torch.float32
    }
    assert {
        t.dtype
        for t in source.targets(next(iter(concept.v_targets)), "v", torch.device("cpu"), torch.float32)
    } == {torch.float32}


def _concept_of(layers, covariance, i_star, index: int, source: str = "sd1-same"):
    concept = models.random_concept(
        layers,
        seed=30 + index,
        name=f"k{index}",
        i_star=i_star,
        c_inv_i_star=torch.linalg.solve(covariance, i_star),
    )
    concept.metadata["covariance"] = source
    return concept


def _independent(e, concepts, covariance, weight, targets, betas, taus, *, exact):
    """The paper's multi-concept edit written from C itself (Appendix B's projection onto span{i*_j}
    in the C⁻¹ metric), per token: W(e − Proj e) + Σ_j σ((s_j − β_j)/τ_j) o*_j."""
    c_inv = torch.linalg.inv(covariance)
    i_stars = torch.stack([c.i_star for c in concepts])  # [m, d]
    s = torch.stack([(e @ c_inv @ i) / (i @ c_inv @ i) for i in i_stars], -1)  # [..., m]
    if exact:
        gram = i_stars @ c_inv @ i_stars.T
        removed = (e @ c_inv @ i_stars.T) @ torch.linalg.inv(gram) @ i_stars
    else:
        removed = s @ i_stars
    gates = torch.sigmoid((s - torch.tensor(betas, dtype=e.dtype)) / torch.tensor(taus, dtype=e.dtype))
    return (e - removed) @ weight.T + gates @ torch.stack(targets)


@pytest.mark.parametrize("exact", [True, False])
def test_three_concepts_with_their_own_beta_and_tau_match_the_paper(unet, layers, covariance, exact):
    draw = torch.Generator().manual_seed(21)
    base = torch.randn(D, generator=draw, dtype=torch.float64)
    concepts = [
        _concept_of(layers, covariance, base + 1.5 * torch.randn(D, generator=draw, dtype=torch.float64), j)
        for j in range(3)
    ]  # correlated i*s
    betas, taus = [0.45, 0.6, 0.75], [0.1, 0.15, 0.3]
    e = torch.randn(2, 6, D, generator=draw, dtype=torch.float64)
    for j, c in enumerate(concepts):
        e[0, j] = c.i_star
    e[1, 0] = 0.6 * concepts[0].i_star + 0.4 * concepts[2].i_star
    projection = "exact" if exact else "approximate"
    with torch.no_grad(), applied(unet, concepts, beta=betas, tau=taus, projection=projection):
        for layer in layers:
            w_k, w_v = layer.to_k.weight, layer.to_v.weight
            keys = [w_k @ c.i_super for c in concepts]
            values = [c.v_targets[layer.name] for c in concepts]
            expected_k = _independent(e, concepts, covariance, w_k, keys, betas, taus, exact=exact)
            expected_v = _independent(e, concepts, covariance, w_v, values, betas, taus, exact=exact)
            torch.testing.assert_close(layer.to_k(e), expected_k, rtol=0, atol=1e-9)
            torch.testing.assert_close(layer.to_v(e), expected_v, rtol=0, atol=1e-9)


def test_the_exact_projection_refuses_concepts_of_different_covariances(unet, layers, covariance):
    draw = torch.Generator().manual_seed(8)
    pair = [
        _concept_of(layers, covariance, torch.randn(D, generator=draw, dtype=torch.float64), j, source)
        for j, source in enumerate(("sd1-abc-corpus1", "sd1-abc-corpus2"))
    ]
    with (
        pytest.raises(PerfusionError, match="one covariance.*'k0': sd1-abc-corpus1"),
        applied(unet, pair, projection="exact"),
    ):
        pass
    with applied(unet, pair):  # the approximation needs only each concept's own u
        pass
    pair[1].metadata["covariance"] = "sd1-abc-corpus1"
    with applied(unet, pair, projection="exact"):
        pass
    assert not is_installed(unet)


def test_global_locking_takes_the_keys_of_registered_rows_from_their_superclass_twin(unet, layers, concept):
    draw = torch.Generator().manual_seed(17)
    context = torch.randn(7, D, generator=draw, dtype=torch.float64)
    context[3] = concept.i_star
    twin = context.clone()
    twin[3:] = torch.randn(4, D, generator=draw, dtype=torch.float64)  # the superclass word and what follows
    uncond = torch.randn(7, D, generator=draw, dtype=torch.float64)
    batch = torch.stack([uncond, context])
    with torch.no_grad(), applied(unet, concept, beta=0.5, tau=0.15):
        local = [(layer.to_k(batch), layer.to_v(batch), layer.to_k(twin)) for layer in layers]
        source = lock_keys(unet, [(context, twin)])
        for layer, (k, v, twin_keys) in zip(layers, local):
            keys = layer.to_k(batch)
            assert torch.equal(keys[0], k[0])  # an unregistered row keeps its local lock
            torch.testing.assert_close(keys[1], twin_keys, rtol=0, atol=0)
            assert torch.equal(layer.to_v(batch), v)  # values stay those of the concept prompt
        assert source.globally_locked_rows == len(layers)
        lock_keys(unet, [])
        assert torch.equal(layers[0].to_k(batch), local[0][0])
        with pytest.raises(PerfusionError, match="same shape"):
            lock_keys(unet, [(context, twin[:5])])
    with pytest.raises(PerfusionError, match="No Perfusion concept is active"):
        lock_keys(unet, [(context, twin)])


def test_the_superclass_prompt_swaps_whole_concept_words(concept):
    other = models.random_concept(cross_attention_layers(models.small_unet()), seed=3, name="rex")
    other.superclass = "dog"
    prompt = "Sks and rex-like rex, sks2 with SKS"
    assert superclass_prompt(prompt, [concept, other]) == "toy and rex-like dog, sks2 with toy"
