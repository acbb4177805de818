"""The latent cache: checked for NaN/inf with a retry at a higher VAE precision; the flip rule."""

from pathlib import Path

import pytest
import torch

from captinv.__main__ import _options, _parser, main
from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.errors import NonFiniteLatentsError
from captinv.images import square_crops, to_pixels
from captinv.inversion import invert
from captinv.latents import build_latent_cache, choose_flip
from captinv.trainer import Callbacks
from tests import factories
from tests.helpers import text_config


def _backend(tmp_path, vae_scale: float = 1.0, *, broken: bool = False, vae_dtype=torch.float16):
    """Tiny SD1 whose VAE runs in `vae_dtype`; its first convolution scaled by `vae_scale` (SDXL's VAE
    overflows float16 the same way: activations past 65504), or holding a NaN (a broken file)."""
    pipe = factories.sd_pipeline(tmp_path)
    with torch.no_grad():
        pipe.vae.encoder.conv_in.weight.mul_(vae_scale)
        if broken:
            pipe.vae.encoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    pipe.vae.to(vae_dtype)
    return DiffusersBackend(pipe, "tiny-vae")


def _reference_latents(backend, pixels):
    """The same VAE weights in float32, encoded without captinv."""
    vae = factories._vae()
    vae.load_state_dict({k: v.float() for k, v in backend.pipe.vae.state_dict().items()})
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def test_a_float16_vae_overflow_is_retried_in_float32(tmp_path, chelsea):
    backend = _backend(tmp_path, vae_scale=1e5)
    box = square_crops(chelsea, 0, torch.Generator())[0]  # the centre square, as the cache takes it
    pixels = torch.stack([to_pixels(chelsea, box, 32, flip) for flip in (False, True)])
    with torch.no_grad():  # what the float16 VAE alone gives: the failure being guarded against
        assert not torch.isfinite(backend.pipe.vae.encode(pixels.half()).latent_dist.mean).all()

    latents = build_latent_cache(
        backend, [chelsea], 32, flip=True, random_crops=0, generator=torch.Generator().manual_seed(0)
    )

    assert torch.isfinite(latents).all()
    assert torch.allclose(latents, _reference_latents(backend, pixels), atol=1e-5)
    assert backend.pipe.vae.dtype == torch.float16  # the model is left as it was
    assert torch.isfinite(backend.encode_images(pixels)).all()  # later encodes stay in float32


@pytest.mark.parametrize("vae_dtype", [torch.float16, torch.float32])
def test_a_vae_that_fails_at_every_precision_is_refused_before_training(tmp_path, chelsea, vae_dtype):
    backend = _backend(tmp_path, broken=True, vae_dtype=vae_dtype)
    steps = []
    with pytest.raises(NonFiniteLatentsError) as caught:
        invert(
            backend,
            [chelsea],
            "a cat",
            text_config(text="a cat"),
            tmp_path / "out",
            base="x",
            callbacks=Callbacks(progress=steps.append),
        )
    message = str(caught.value)
    assert "NaN/inf latents" in message and "use another checkpoint" in message
    assert ("higher precision too" in message) == (vae_dtype == torch.float16)
    assert steps == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        ("a big red circle on the left", False),
        ("a cat looking right", False),
        ("the leftmost house", False),
        ("a right-handed pitcher", False),
        ("a fan turning counterclockwise", False),
        ("a big red circle in the centre", True),
        ("a copyright notice", True),
        ("a bright lighthouse", True),
    ],
)
def test_auto_flip_is_off_when_the_text_names_a_side(text, enabled):
    assert choose_flip("auto", text).enabled is enabled


def test_flip_flags_override_the_rule():
    assert choose_flip("on", "a dog on the left").enabled is True
    assert choose_flip("off", "a dog").enabled is False
    parse = _parser().parse_args
    common = ["invert", "x.png", "--model", "m"]
    assert _options(parse(common)).flip == "auto"
    assert _options(parse([*common, "--flip"])).flip == "on"
    assert _options(parse([*common, "--no-flip"])).flip == "off"


def test_the_result_says_whether_it_flipped(sd1, chelsea, tmp_path):
    result = invert(sd1, [chelsea], "a cat on the left", text_config(text="x"), tmp_path, base="c")
    assert result.to_dict()["flip"] is False
    assert "'left'" in result.to_dict()["flip_reason"]


def test_the_cli_says_when_the_rule_turns_flip_off(tmp_path, capsys):
    image = str(Path(__file__).resolve().parent.parent / "examples" / "miniworld-yellow-circle.png")
    common = ["invert", image, "--model", "miniworld", "--init", "text", "--steps", "1", "--device", "cpu"]
    assert main([*common, "--text", "a small yellow circle on the left", "--out", str(tmp_path / "a")]) == 0
    assert "horizontal flip off: the init text says 'left'" in capsys.readouterr().err
    assert main([*common, "--text", "a small yellow circle", "--out", str(tmp_path / "b")]) == 0
    assert "horizontal flip on" in capsys.readouterr().err
