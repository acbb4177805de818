"""Half precision on the CPU: the autocast + loss-scaler path a GPU run takes, on the tiny models."""

import pytest
import torch

from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.backends.diffusers_loading import model_dtype
from captinv.errors import ConfigError, TrainingDivergedError
from captinv.inversion import prepare
from tests import factories
from tests.helpers import make_trainer, text_config, weights

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module", params=HALF, ids=["bf16", "fp16"])
def half(request, model_dir) -> DiffusersBackend:
    return DiffusersBackend(factories.sd_pipeline(model_dir).to(dtype=request.param), "tiny-sd1-half")


def _autocast_seen(backend) -> list[tuple[bool, torch.dtype]]:
    """Records, at every UNet call, whether CPU autocast is on and in which dtype."""
    seen: list[tuple[bool, torch.dtype]] = []
    backend.unet.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
    )
    return seen


def test_half_model_trains_under_autocast_with_float32_vectors(half, chelsea, tmp_path):
    before = weights(half)
    trainer = make_trainer(half, chelsea, tmp_path, steps=6, batch_size=2)
    initial = trainer.params["emb_params"].detach().clone()
    seen = _autocast_seen(half)
    try:
        result = trainer.run()
    finally:
        half.unet._forward_pre_hooks.clear()

    assert seen and all(on and dtype == half.dtype for on, dtype in seen)
    assert trainer.scaler.is_enabled() == (half.dtype == torch.float16)
    assert len(result.losses) == 6 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.rollbacks == 0
    assert trainer.params["emb_params"].dtype == torch.float32
    assert not torch.equal(trainer.params["emb_params"], initial)
    after = weights(half)
    assert all(torch.equal(before[k], after[k]) for k in before), "a model weight changed"


def test_an_overflowing_forward_is_rolled_back(half, chelsea, tmp_path):
    trainer = make_trainer(half, chelsea, tmp_path)
    assert trainer.step() is not None
    good = trainer.params["emb_params"].detach().clone()
    lr = trainer.optimizer.param_groups[0]["lr"]
    with torch.no_grad():  # finite in float32, past the largest float16 / a NaN-producing bfloat16 scale
        trainer.params["emb_params"][0] = 1e38 if half.dtype == torch.bfloat16 else 1e6

    assert trainer.step() is None

    assert torch.equal(trainer.params["emb_params"], good)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr / 2)
    assert trainer.step() is not None


def test_a_float16_gradient_overflow_skips_the_update_and_lowers_the_loss_scale(model_dir, chelsea, tmp_path):
    backend = DiffusersBackend(factories.sd_pipeline(model_dir).to(dtype=torch.float16), "tiny-fp16")
    trainer = make_trainer(backend, chelsea, tmp_path)
    assert trainer.step() is not None
    trainer.scaler.update(2.0**60)  # a loss scale whose scaled gradients overflow float16
    before = trainer.params["emb_params"].detach().clone()

    assert trainer.step() is not None

    assert torch.equal(trainer.params["emb_params"], before)  # the update was skipped, not applied
    assert trainer.scaler.get_scale() == 2.0**59  # backed off
    trainer.scaler.update(2.0**10)
    assert trainer.step() is not None and not torch.equal(trainer.params["emb_params"], before)


def test_mixed_precision_off_means_float32(model_dir, tmp_path):
    assert model_dtype(torch.device("cuda"), mixed_precision=False) == torch.float32
    assert model_dtype(torch.device("cuda"), mixed_precision=True) == torch.float16
    assert model_dtype(torch.device("cpu"), mixed_precision=True) == torch.float32
    backend = DiffusersBackend(factories.sd_pipeline(model_dir).to(dtype=torch.float16), "tiny-fp16")
    with pytest.raises(
        ConfigError, match=r"runs in float16.*--no-mixed-precision \(loads the model in float32\)"
    ):
        prepare(backend, "a cat", "x", text_config(mixed_precision=False), tmp_path)  # before any model work


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_divergence_advice_fits_the_model_precision(model_dir, chelsea, tmp_path, dtype):
    backend = DiffusersBackend(factories.sd_pipeline(model_dir).to(dtype=dtype), "tiny")
    trainer = make_trainer(backend, chelsea, tmp_path)
    with torch.no_grad():
        trainer._last_good[0][0, 0] = float("nan")
        trainer.params["emb_params"][0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError) as caught:
        for _ in range(10):
            trainer.step()
    message = str(caught.value)
    assert "Lower the learning rate" in message
    assert ("--no-mixed-precision (loads the model in float32)" in message) == (dtype == torch.float16)
