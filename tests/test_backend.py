import pytest
import torch

from captinv.backends.base import frozen_parameters


def _as_tensors(cond):
    return (cond.hidden, cond.pooled) if hasattr(cond, "hidden") else (cond,)


@pytest.mark.parametrize("backend_name", ["sd1", "sd2v", "sdxl"])
def test_spliced_token_rows_reproduce_the_plain_prompt_exactly(request, backend_name):
    """An embedding holding a word's own token rows must encode exactly like the word."""
    backend = request.getfixturevalue(backend_name)
    rows = backend.token_rows(backend.tokenize("tabby cat"))
    plain = backend.conditioning(["a photo of a tabby cat on a mat", "x"], {})
    spliced = backend.conditioning(["a photo of a Kitty-W01-x on a mat", "x"], {"kitty-w01-x": rows})
    for a, b in zip(_as_tensors(plain), _as_tensors(spliced)):
        assert torch.equal(a, b)


def test_gradients_reach_only_the_spliced_vectors(sdxl):
    rows = {k: v.clone().requires_grad_() for k, v in sdxl.token_rows(sdxl.tokenize("cat")).items()}
    with frozen_parameters(sdxl.frozen_modules()):
        cond = sdxl.conditioning(["a photo of zz-w01-cat"], {"zz-w01-cat": rows})
        latents = torch.randn(1, 4, 16, 16)
        sdxl.predict(latents, torch.tensor([500]), cond).square().mean().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in rows.values())
    assert all(p.grad is None for m in sdxl.frozen_modules() for p in m.parameters())


def test_frozen_parameters_restores_each_flag(sd1):
    params = list(sd1.unet.parameters())
    params[0].requires_grad_(False)
    before = [p.requires_grad for p in params]
    with frozen_parameters([sd1.unet]):
        assert not any(p.requires_grad for p in params)
    assert [p.requires_grad for p in params] == before
    params[0].requires_grad_(True)


def test_schedule_targets_follow_parameterization(sd1, sd2v):
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(sd1.schedule.target(x0, noise, t), noise)
    a = sd2v.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected_v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(sd2v.schedule.target(x0, noise, t), expected_v)
    assert torch.allclose(sd2v.schedule.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    assert sd1.schedule.alphas_cumprod.dtype == torch.float32


def test_families_are_detected(sd1, sd2v, sdxl):
    assert (sd1.family, sd2v.family, sdxl.family) == ("sd1", "sd2", "sdxl")
    assert [e.key for e in sdxl.encoders] == ["clip_l", "clip_g"]
    assert sd2v.schedule.parameterization == "v"


def _saved_activation_bytes(backend, checkpointing: bool) -> int:
    """Bytes autograd keeps for backward in one training forward, the model's own weights aside.

    Tensors a checkpointed block would recompute are held by the checkpoint's own hooks, not
    handed to these, so this counts what really stays in memory until backward.
    """
    weights = {p.untyped_storage().data_ptr() for m in backend.frozen_modules() for p in m.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    rows = {k: v.clone().requires_grad_() for k, v in backend.token_rows(backend.tokenize("cat")).items()}
    with backend.training(checkpointing), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cond = backend.conditioning(["a photo of zz-cat", "zz-cat on a mat"], {"zz-cat": rows})
        loss = backend.predict(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), cond).square().mean()
        loss.backward()
    assert all(v.grad is not None for v in rows.values())
    return sum(kept.values())


@pytest.mark.parametrize("backend_name", ["sd1", "sdxl"])
def test_gradient_checkpointing_keeps_fewer_activations(request, backend_name):
    backend = request.getfixturevalue(backend_name)
    plain = _saved_activation_bytes(backend, checkpointing=False)
    checkpointed = _saved_activation_bytes(backend, checkpointing=True)
    assert checkpointed < 0.6 * plain, (checkpointed, plain)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in backend.unet.modules())


def _chunks(cond, count):
    return [cond[:, 77 * i : 77 * (i + 1)] for i in range(count)]


@pytest.mark.parametrize("backend_name", ["sd1", "sdxl"])
def test_an_embedding_that_does_not_fit_the_chunk_starts_the_next_one(request, backend_name):
    """As in the WebUI: 72 words, then a 4-vector embedding -> it moves whole to a second chunk."""
    backend = request.getfixturevalue(backend_name)
    words = " ".join(["cat"] * 72)
    rows = backend.token_rows(backend.tokenize("a tabby cat sitting"))
    assert all(value.shape[0] == 4 for value in rows.values())

    cond = backend.conditioning([f"{words} zz-kitty on a mat"], {"zz-kitty": rows})
    first = backend.conditioning([words], {})
    second = backend.conditioning(["a tabby cat sitting on a mat"], {})

    for ours, alone in zip(_as_tensors(cond), _as_tensors(first)):
        if ours.dim() == 2:  # SDXL's pooled vector: the first chunk's, as in the WebUI
            assert torch.allclose(ours, alone, atol=1e-6)
            continue
        assert ours.shape[1] == 154
        head, tail = _chunks(ours, 2)
        assert torch.allclose(head, alone, atol=1e-6)
        assert torch.allclose(tail, _as_tensors(second)[0], atol=1e-6)


def test_long_text_is_chunked_at_75_tokens_after_the_last_comma(sd1):
    """Text past 75 tokens is not cut: a new chunk starts, taking the words after a comma within
    the WebUI's 20-token backtrack along."""
    before, after = " ".join(["cat"] * 70), " ".join(["dog"] * 10)
    cond = sd1.conditioning([f"{before}, {after}"], {})
    head, tail = _chunks(cond, 2)
    assert cond.shape[1] == 154
    assert torch.allclose(head, sd1.conditioning([f"{before},"], {}), atol=1e-6)
    assert torch.allclose(tail, sd1.conditioning([after], {}), atol=1e-6)


def test_a_batch_pads_shorter_prompts_with_empty_chunks(sd1):
    long = " ".join(["cat"] * 80)
    cond = sd1.conditioning([long, "a dog"], {})
    assert cond.shape[:2] == (2, 154)
    assert torch.allclose(cond[1:, :77], sd1.conditioning(["a dog"], {}), atol=1e-6)
    assert torch.allclose(cond[1:, 77:], sd1.conditioning([""], {}), atol=1e-6)
    image = sd1.generate(long, {}, steps=2)  # the negative prompt is padded to the same chunks
    assert image.size == (sd1.default_resolution,) * 2
