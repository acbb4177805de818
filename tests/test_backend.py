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
