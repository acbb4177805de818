"""The checkpoints users load: single files, SD2 ε vs v, zero terminal SNR, inpainting, refusals.

Single files are the tiny pipelines written in the original (WebUI) layout by tests/single_file.py
and loaded through diffusers' real `from_single_file`, with a local config folder for offline use.
"""

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

from captinv.__main__ import main
from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.errors import UnsupportedModelError
from tests import factories
from tests.single_file import checkpoint_state, save_checkpoint, save_configs


def _load(path, folder, **options) -> DiffusersBackend:
    return DiffusersBackend.load(str(path), device="cpu", config=str(folder), **options)


@pytest.mark.parametrize(
    "make",
    [factories.sd_pipeline, factories.sdxl_pipeline, lambda tmp: factories.sd_pipeline(tmp, in_channels=9)],
    ids=["sd1", "sdxl", "sd1-inpainting"],
)
def test_a_single_file_loads_back_every_weight(make, tmp_path):
    pipe = make(tmp_path)
    path = save_checkpoint(checkpoint_state(pipe), tmp_path / "model.safetensors")
    backend = _load(path, save_configs(pipe, tmp_path / "config"))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is None:
            continue
        ours, theirs = getattr(backend.pipe, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert backend.family == ("sdxl" if "text_encoder_2" in pipe.components else "sd1")
    assert backend.inpainting == (pipe.unet.config.in_channels == 9)


@pytest.fixture(scope="module")
def sd2_files(tmp_path_factory):
    """An SD2 file whose UNet answers like an ε model, one that answers like a v model (its output
    bias pulls the t=999 prediction far below the input, as a v model's -x0 does), and the config
    folder diffusers would use for any SD2 file: the 768 px v model's (sample size 24 here, 16 for 512)."""
    folder = tmp_path_factory.mktemp("sd2")
    pipe = factories.sd_pipeline(folder, width=1024, prediction="v_prediction")
    config = save_configs(pipe, folder / "config", sample_size=24)
    state = checkpoint_state(pipe)
    eps = save_checkpoint(state, folder / "sd2-base.safetensors")
    state["model.diffusion_model.out.2.bias"] = torch.full_like(
        state["model.diffusion_model.out.2.bias"], -3.0
    )
    v = save_checkpoint(state, folder / "sd2-768-v.safetensors")
    return eps, v, config


def test_sd2_single_files_are_eps_or_v_as_the_webui_decides(sd2_files):
    eps, v, config = sd2_files
    guessed = StableDiffusionPipeline.from_single_file(str(eps), config=str(config))
    assert guessed.scheduler.config.prediction_type == "v_prediction"  # diffusers' guess for any SD2 file

    base = _load(eps, config)
    assert (base.family, base.schedule.parameterization, base.default_resolution) == ("sd2", "eps", 32)
    assert base.pipe.scheduler.config.prediction_type == "epsilon"  # previews sample as ε too
    assert "the UNet's response" in base.describe()
    large = _load(v, config)
    assert (large.schedule.parameterization, large.default_resolution) == ("v", 48)


def test_the_user_and_a_yaml_beside_the_file_override_the_detection(sd2_files, tmp_path):
    eps, _, config = sd2_files
    forced = _load(eps, config, prediction="v")
    assert (forced.schedule.parameterization, forced.default_resolution) == ("v", 48)
    assert "--prediction-type" in forced.describe()
    beside = tmp_path / "sd2-v.safetensors"
    beside.symlink_to(eps)
    beside.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert _load(beside, config).schedule.parameterization == "v"


def _zero_snr_schedule(backend) -> torch.Tensor:
    config = backend.pipe.scheduler.config
    return DDPMScheduler(
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        rescale_betas_zero_snr=True,
    ).alphas_cumprod


@pytest.mark.parametrize(
    ("make", "flags", "prediction"),
    [(factories.sd_pipeline, ("ztsnr",), "eps"), (factories.sdxl_pipeline, ("v_pred", "ztsnr"), "v")],
    ids=["sd1-ztsnr", "sdxl-vpred-ztsnr"],
)
def test_a_ztsnr_file_trains_on_the_rescaled_schedule_it_samples_with(make, flags, prediction, tmp_path):
    pipe = make(tmp_path)
    state = checkpoint_state(pipe)
    plain = _load(save_checkpoint(state, tmp_path / "plain.safetensors"), save_configs(pipe, tmp_path / "c"))
    path = save_checkpoint(state, tmp_path / "ztsnr.safetensors", flags=flags)
    backend = _load(path, tmp_path / "c")

    assert backend.schedule.parameterization == prediction
    assert backend.pipe.scheduler.config.rescale_betas_zero_snr
    assert torch.allclose(backend.schedule.alphas_cumprod, _zero_snr_schedule(backend))
    assert backend.schedule.alphas_cumprod[-1] < 1e-6 < plain.schedule.alphas_cumprod[-1]
    assert "zero terminal SNR" in backend.describe()


def test_a_diffusers_model_configured_for_zero_terminal_snr_trains_on_that_schedule(tmp_path):
    pipe = factories.sd_pipeline(tmp_path)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, rescale_betas_zero_snr=True)
    backend = DiffusersBackend(pipe)
    assert torch.allclose(backend.schedule.alphas_cumprod, _zero_snr_schedule(backend))


def test_an_inpainting_model_is_conditioned_on_a_grey_image_under_a_full_mask(sd1_inpaint):
    noisy, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    cond = sd1_inpaint.conditioning(["a cat", "a dog"], {})
    with torch.no_grad():
        vae = sd1_inpaint.pipe.vae
        grey = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean * vae.config.scaling_factor
        extra = torch.cat([torch.ones(2, 1, 16, 16), grey.expand(2, -1, -1, -1)], dim=1)
        expected = sd1_inpaint.unet(torch.cat([noisy, extra], dim=1), t, encoder_hidden_states=cond).sample
        assert torch.allclose(sd1_inpaint.predict(noisy, t, cond), expected, atol=1e-6)
    assert sd1_inpaint.generate("a cat", {}, steps=2).size == (32, 32)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda tmp: factories.sd_pipeline(
                tmp, in_channels=8, pipeline_class=StableDiffusionInstructPix2PixPipeline
            ),
            "instruct-pix2pix",
        ),
        (factories.sdxl_refiner_pipeline, "load the base model"),
        (factories.sd3_pipeline, "SD3"),
    ],
    ids=["pix2pix", "sdxl-refiner", "sd3"],
)
def test_models_captinv_cannot_train_are_refused_by_name(make, message, tmp_path):
    with pytest.raises(UnsupportedModelError, match=message):
        DiffusersBackend(make(tmp_path))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"model.diffusion_model.x_embedder.proj.weight": (4, 4)}, "Stable Diffusion 3"),
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (4,)}, "Flux"),
        ({"conditioner.embedders.0.model.ln_final.weight": (4,)}, "SDXL refiner"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)}, "instruct-pix2pix"),
        ({"embedder.model.ln_final.weight": (4,)}, "unCLIP"),
        ({"first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3)}, "not a Stable Diffusion checkpoint"),
    ],
    ids=["sd3", "flux", "refiner", "pix2pix", "unclip", "vae-only"],
)
def test_single_files_captinv_cannot_train_are_refused_before_loading(
    keys, message, chelsea, tmp_path, capsys
):
    path = save_checkpoint({k: torch.zeros(shape) for k, shape in keys.items()}, tmp_path / "x.safetensors")
    chelsea.save(tmp_path / "cat.png")
    out = str(tmp_path / "out")
    code = main(
        [
            "invert",
            str(tmp_path / "cat.png"),
            "--model",
            str(path),
            "--init",
            "text",
            "--text",
            "a",
            "--out",
            out,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_cli_loads_a_single_file_offline_and_says_what_it_trains(chelsea, tmp_path, capsys):
    pipe = factories.sd_pipeline(tmp_path)
    path = save_checkpoint(checkpoint_state(pipe), tmp_path / "tiny.safetensors")
    chelsea.save(tmp_path / "cat.png")
    common = [str(tmp_path / "cat.png"), "--model", str(path), "--init", "text", "--text", "a cat"]
    common += ["--steps", "1", "--resolution", "64"]
    config = ["--model-config", str(save_configs(pipe, tmp_path / "config"))]

    assert main(["invert", *common, "--out", str(tmp_path / "a")]) == 2  # offline: no Hub config
    assert "--model-config" in capsys.readouterr().err
    assert main(["invert", *common, *config, "--prediction-type", "v", "--out", str(tmp_path / "b")]) == 0
    assert (
        "model: tiny: sd1, v-prediction (from --prediction-type), 32 px, float32" in capsys.readouterr().err
    )
