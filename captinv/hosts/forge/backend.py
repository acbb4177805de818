"""The core's model interface over WebUI Forge's loaded diffusion engine.

Text goes through Forge's own text engines with the run's vectors registered, live, in each
engine's embedding database, so what is trained is what txt2img splices. The UNet is called
directly (as Forge's `KModel.apply_model` does, minus its k-diffusion scaling) with the
discrete-time schedule derived from the sigmas Forge samples with. Everything a run changes
(registered names, parameter flags, clip skip, the model's current patchers) is undone on exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from backend.modules.k_prediction import Prediction, rescale_zero_terminal_snr_sigmas
from modules import shared
from torch import nn

from captinv.backends.base import (
    Conditioning,
    EncoderSpec,
    ModelBackend,
    NoiseSchedule,
    Vectors,
    frozen_parameters,
)
from captinv.errors import UnsupportedModelError
from captinv.hosts.forge import text
from captinv.hosts.forge.model_state import Residency, clip_skip_layers

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}


def variant_problem(model) -> str | None:
    """What makes the loaded Forge model one captinv cannot train against, or None."""
    if not (model.is_sd1 or model.is_sd2 or model.is_sdxl) or model.is_sd3:
        return f"This is a {type(model).__name__} model, not Stable Diffusion 1.x, 2.x or SDXL."
    if model.is_sdxl and len(text.text_engines(model)) < 2:
        return "This is the SDXL refiner (no CLIP-L text encoder); select an SDXL base model."
    if model.is_inpaint:
        return "This is an inpainting model (9-channel UNet)."
    predictor = model.forge_objects_original.unet.model.predictor
    if not isinstance(predictor, Prediction) or predictor.prediction_type not in _PREDICTIONS:
        return f"This model uses a {predictor.prediction_type} prediction that captinv does not train with."
    return None


def check_supported(model) -> None:
    problem = variant_problem(model)
    if problem:
        raise UnsupportedModelError(
            f"{problem} captinv trains against SD 1.x, 2.x and SDXL base text-to-image models."
        )


def _training_alphas(predictor, model_config) -> torch.Tensor:
    """ā of the sigmas Forge samples with: rescaled to zero terminal SNR when the checkpoint says
    so or Settings asks for it, as processing does for every generation. (Forge never rescales
    its `alphas_cumprod` buffer, so derive ā = 1/(σ²+1) from the sigmas.)"""
    sigmas = predictor.sigmas.detach().to("cpu", torch.float32).clone()
    if getattr(model_config, "ztsnr", False) or shared.opts.sd_noise_schedule == "Zero Terminal SNR":
        sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
    return 1.0 / (sigmas * sigmas + 1.0)


def _saved_copy(tensor: torch.Tensor) -> torch.Tensor:
    """What autograd keeps of a tensor the UNet's forward saves for backward: a copy, unless it is
    a frozen weight (or a view of one) or a trained leaf, which nothing modifies. Forge's UNet adds
    in place to activations it has already handed to a layer norm (`x += n`, written for
    inference); autograd keeps the value from before. (With hooks autograd no longer checks
    versions, so everything that could be modified is copied.)"""
    weight = isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter)
    return tensor if weight or (tensor.is_leaf and tensor.requires_grad) else tensor.clone()


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class ForgeBackend(ModelBackend):
    def __init__(self, model, objects, networks: str = "") -> None:
        """`objects`: the patchers to train with; `networks`: the LoRAs deliberately kept (recorded)."""
        self.model, self.objects, self.networks = model, objects, networks
        self.family = "sdxl" if model.is_sdxl else "sd2" if model.is_sd2 else "sd1"
        info = getattr(model, "sd_checkpoint_info", None)
        self.model_name = getattr(info, "name_for_extra", None) or "forge-model"
        self.engines = text.text_engines(model)
        self.encoders = tuple(EncoderSpec(key, text.token_table(e).shape[1]) for key, e in self.engines)
        kmodel = objects.unet.model
        parameterization = _PREDICTIONS[kmodel.predictor.prediction_type]
        self.schedule = NoiseSchedule(
            _training_alphas(kmodel.predictor, model.model_config), parameterization
        )
        self.device = objects.unet.load_device
        self.dtype = kmodel.computation_dtype
        native = {"sdxl": 1024, "sd2": 768 if parameterization == "v" else 512, "sd1": 512}
        self.default_resolution = native[self.family]
        self.residency = Residency(objects)
        self.residency.ensure()  # base weights back in place before any row is read
        self._registered: dict[str, object] = {}
        self._resolution = self.default_resolution

    # -- ModelBackend --------------------------------------------------------------

    def tokenize(self, prompt: str) -> list[int]:
        return list(self.engines[0][1].tokenize([prompt])[0])

    def token_rows(self, token_ids: list[int]) -> Vectors:
        index = torch.tensor(token_ids, dtype=torch.long)
        rows = {}
        for key, engine in self.engines:
            table = text.token_table(engine)
            rows[key] = table.detach()[index.to(table.device)].float().cpu().clone()
        return rows

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self._resolution = pixels.shape[-1]
        channels = self.objects.vae.latent_channels
        latent = pixels.shape[-1] // 8
        self.residency.reserve((1, channels, latent, latent))
        vae_device = self.objects.vae.device
        # The VAE samples its posterior with the global RNG: fork it so a run is reproducible and
        # the WebUI's own random state is left alone. Forge encodes under inference mode: clone
        # the result into an ordinary tensor.
        with torch.random.fork_rng(devices=[] if vae_device.type == "cpu" else [vae_device]):
            torch.manual_seed(0)
            chunks = [
                self.model.encode_first_stage(chunk.to(vae_device, torch.float32)).clone().float()
                for chunk in pixels.split(4)
            ]
        return torch.cat(chunks)

    def conditioning(self, prompts: list[str], embeddings: Mapping[str, Vectors]) -> Conditioning:
        self.residency.ensure()
        for name, vectors in embeddings.items():
            self._register(name, vectors)
        return text.conditioning(self.model, prompts, self._resolution)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.residency.ensure()
        kmodel = self.objects.unet.model
        dtype = kmodel.computation_dtype
        extra = {"y": cond["vector"].to(self.device, dtype)} if isinstance(cond, dict) else {}
        with torch.autograd.graph.saved_tensors_hooks(_saved_copy, _unchanged):
            out = kmodel.diffusion_model(
                noisy.to(self.device, dtype),
                timesteps.float(),
                context=self.context(cond).to(self.device, dtype),
                transformer_options={},
                **extra,
            )
        return out.float()

    def frozen_modules(self) -> Iterable[torch.nn.Module]:
        return self.residency.modules

    def denoiser(self) -> torch.nn.Module:
        return self.objects.unet.model.diffusion_model

    def context(self, cond: Conditioning) -> torch.Tensor:
        return cond["crossattn"] if isinstance(cond, dict) else cond

    def existing_names(self) -> set[str]:
        return text.known_names(self.model)

    def run_metadata(self) -> dict[str, str]:
        """What of the WebUI's state the vectors were trained under: the text layer clip skip
        picks (Forge applies it to both SDXL encoders, never above the penultimate layer there)
        and any LoRA the user chose to keep active."""
        metadata = {"webui_networks": self.networks} if self.networks else {}
        minimal = max(engine.minimal_clip_skip for _key, engine in self.engines)
        layers = max(clip_skip_layers(), minimal)
        if self.family == "sd1" or layers > minimal:
            metadata["clip_skip"] = str(layers)
        return metadata

    @contextmanager
    def training(self, gradient_checkpointing: bool) -> Iterator[None]:
        """Forge's UNet has no gradient checkpointing: the flag changes nothing here."""
        with ExitStack() as stack:
            self.residency.ensure(force=True)  # frees memory around both for the run's activations
            stack.enter_context(frozen_parameters(self.frozen_modules()))
            stack.callback(self._unregister_all)
            yield

    # -- helpers -------------------------------------------------------------------

    def _register(self, name: str, vectors: Vectors) -> None:
        """Splice `vectors` for `name` in every engine; registered again whenever an engine's
        database no longer holds this run's embedding (a model reload rebuilds them)."""
        embedding = self._registered.get(name)
        fresh = embedding is None or any(
            engine.embeddings.word_embeddings.get(name) is not embedding for _key, engine in self.engines
        )
        if fresh:
            embedding = self._registered[name] = text.make_embedding(name, vectors)
            text.register(self.model, embedding)
        else:
            embedding.vec = text.embedding_vec(vectors)

    def _unregister_all(self) -> None:
        for name in self._registered:
            text.unregister(self.model, name)
        self._registered.clear()
