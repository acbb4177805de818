"""The core's model interface over reForge's loaded model: A1111's backend (the hijack's
embedding database and text wrappers are reForge's too) where the model objects differ.

- The UNet, CLIP and VAE live in `ldm_patched` patchers that a memory manager loads and evicts:
  the run loads the UNet and CLIP patchers together and loads them again before a step when
  something (the VAE encode, a CLIP reload) evicted one.
- reForge runs every generation under `torch.inference_mode()`, so weights moved or LoRA-merged
  by a generation are inference tensors, which autograd cannot save for backward: the run makes
  them ordinary tensors of the same values whenever it loads.
- Nothing casts inputs to the UNet's dtype (A1111's CondFuncs are gone), and A1111's dtype
  globals, `--lowvram` and `sd_hijack_checkpoint` do not steer `ldm_patched` models: the backend
  reads dtypes, schedule and blocks from the loaded model instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from ldm_patched.ldm.modules.attention import BasicTransformerBlock
from ldm_patched.ldm.modules.diffusionmodules.openaimodel import ResBlock
from ldm_patched.modules import model_management
from ldm_patched.modules.model_sampling import rescale_zero_terminal_snr_sigmas
from modules import shared

from captinv.backends.base import Conditioning, NoiseSchedule
from captinv.hosts.a1111.backend import A1111Backend
from captinv.hosts.reforge.autograd import checkpointing, materialise


class ReForgeBackend(A1111Backend):
    def __init__(self, networks: str = "") -> None:
        super().__init__(networks)
        objects = self.model.forge_objects  # the run's set, chosen by `model_state.base_model`
        self._patchers = (objects.unet, objects.clip.patcher)
        self._load()
        unet = objects.unet.model
        self.dtype = unet.manual_cast_dtype or unet.get_dtype()  # what `BaseModel.apply_model` casts to
        self.device = objects.unet.load_device
        self.schedule = NoiseSchedule(_sampling_alphas(self.model), self.schedule.parameterization)

    def _encode(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Through the VAE patcher itself (BHWC in [0, 1]; it loads itself and casts to its own
        dtype, so `dtype` is not used), without the inference-mode wrapper reForge puts around
        `encode_first_stage`."""
        objects = self.model.forge_objects
        latents = objects.vae.encode(pixels.movedim(1, -1) * 0.5 + 0.5)
        return objects.unet.model.model_config.latent_format.process_in(latents)

    def encode_images_upcast(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """None: reForge's VAE patcher chooses its own dtype (its --vae-in-fp32 etc. decide)."""
        return None

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if not all(_is_loaded(patcher) for patcher in self._patchers):
            self._load()
        return super().predict(noisy.to(self.dtype), timesteps, _cast(cond, self.dtype)).float()

    @contextmanager
    def gradient_checkpointing(self, enabled: bool) -> Iterator[None]:
        """A1111's switch patches `ldm` classes that reForge never runs: recompute reForge's own
        transformer and residual blocks instead."""
        blocks = [
            module
            for module in self.denoiser().modules()
            if enabled and isinstance(module, (BasicTransformerBlock, ResBlock))
        ]
        with checkpointing(blocks):
            yield

    def _load(self) -> None:
        """Load the UNet and CLIP patchers together and make their weights ordinary tensors."""
        model_management.load_models_gpu(list(self._patchers))
        for patcher in self._patchers:
            materialise(patcher.model)


def _is_loaded(patcher) -> bool:
    return any(loaded is patcher for loaded in model_management.loaded_models())


def _cast(cond: Conditioning, dtype: torch.dtype) -> Conditioning:
    if isinstance(cond, dict):
        return {key: value.to(dtype) for key, value in cond.items()}
    return cond.to(dtype)


def _sampling_alphas(model) -> torch.Tensor:
    """ā of the sigmas reForge samples with (`model_sampling`, not the ldm shell's buffers),
    rescaled to zero terminal SNR when the checkpoint or Settings asks, as `process_images` does."""
    sigmas = model.forge_objects.unet.model.model_sampling.sigmas.detach().to("cpu", torch.float32)
    if getattr(model, "ztsnr", False) or getattr(shared.opts, "sd_noise_schedule", "") == "Zero Terminal SNR":
        sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
    return 1.0 / (sigmas * sigmas + 1.0)
