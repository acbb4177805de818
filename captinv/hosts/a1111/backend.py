"""The core's model interface over AUTOMATIC1111's already-loaded `shared.sd_model`.

Training goes through the WebUI's own text-conditioning path: the pseudo-words
are `Embedding` objects registered in the hijack's embedding database while a
run lasts, and the hijacked token embedding splices them in exactly as it will
in txt2img. Everything a run changes (parameter flags, registered names,
SDXL embedders' `is_trainable`, gradient checkpointing) is restored on exit,
whether the run finished, was interrupted or failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from modules import devices, prompt_parser, sd_hijack, sd_models, shared
from modules.textual_inversion.textual_inversion import Embedding

from captinv.backends.base import (
    Conditioning,
    EncoderSpec,
    ModelBackend,
    NoiseSchedule,
    Vectors,
    frozen_parameters,
)
from captinv.errors import UnsupportedModelError


def check_supported() -> None:
    """Refuse, with a message, the set-ups this backend cannot train against."""
    if getattr(shared.cmd_opts, "lowvram", False):
        raise UnsupportedModelError(
            "Training is not possible with --lowvram; restart with --medvram or without it."
        )
    check_model()


def check_model() -> None:
    """Refuse, with a message, a missing model or one captinv cannot train against."""
    model = shared.sd_model
    if model is None:
        raise UnsupportedModelError("No Stable Diffusion model is loaded; pick a checkpoint first.")
    problem = _variant_problem(model)
    if problem:
        raise UnsupportedModelError(
            f"{problem} captinv trains against SD 1.x, 2.x and SDXL base text-to-image models."
        )


def _variant_problem(model) -> str | None:
    """What makes the loaded checkpoint one captinv cannot train against (the WebUI's own flags
    and the ldm config, see shared/reference/a1111-real-setups.md §3.1), or None."""
    if getattr(model, "is_sd3", False):
        return "Stable Diffusion 3 is a flow model without the cross-attention captinv trains."
    if not (model.is_sd1 or model.is_sd2 or model.is_sdxl):
        return "This model is not Stable Diffusion 1.x, 2.x or SDXL."
    if model.is_sdxl:
        text_encoders = [e for e in model.conditioner.embedders if hasattr(e, "encode_embedding_init_text")]
        if len(text_encoders) < 2:
            return "This is the SDXL refiner (no CLIP-L text encoder); select an SDXL base model."
        if getattr(model, "is_sdxl_inpaint", False):
            return "This is an SDXL inpainting model (9-channel UNet)."
        return None
    if getattr(model, "cond_stage_key", "txt") == "edit":
        return "This is an instruct-pix2pix model (it is conditioned on an input image)."
    key = getattr(model.model, "conditioning_key", "crossattn")
    if key == "hybrid":
        return "This is an inpainting model (9-channel UNet)."
    if key != "crossattn" or hasattr(model, "depth_model") or hasattr(model, "embedder"):
        return f"This is a depth or unCLIP model (conditioning '{key}')."
    return None


def _webui_vec(vectors: Vectors) -> torch.Tensor | dict[str, torch.Tensor]:
    """An `Embedding.vec`: one tensor for SD1/SD2, the per-encoder dict for SDXL."""
    return vectors["emb_params"] if "emb_params" in vectors else dict(vectors)


def register_embedding(name: str, vectors: Vectors) -> Embedding:
    """Make `name` in a prompt mean these vectors, without a file (until `unregister_embedding`)."""
    embedding = Embedding(_webui_vec(vectors), name)
    embedding.vectors = next(iter(vectors.values())).shape[0]
    embedding.shape = sum(v.shape[1] for v in vectors.values())
    sd_hijack.model_hijack.embedding_db.register_embedding_by_name(embedding, shared.sd_model, name)
    return embedding


def unregister_embedding(name: str) -> None:
    sd_hijack.model_hijack.embedding_db.register_embedding_by_name(None, shared.sd_model, name)


def _token_tables(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(key, token-embedding weight) of each hijacked text encoder, in file-key order."""
    tables = {
        module.textual_inversion_key: module.wrapped.weight
        for module in model.modules()
        if isinstance(module, sd_hijack.EmbeddingsWithFixes)
    }
    if model.is_sdxl:
        return [("clip_l", tables["clip_l"]), ("clip_g", tables["clip_g"])]
    return [("emb_params", next(iter(tables.values())))]


def _training_alphas(model) -> torch.Tensor:
    """The ā the WebUI samples with: the checkpoint's own schedule, rescaled to zero terminal SNR
    when the checkpoint says so (`ztsnr`, dev) or Settings asks for it, as
    `sd_models.apply_alpha_schedule_override` does before every generation."""
    alphas = getattr(model, "alphas_cumprod_original", None)
    alphas = (model.alphas_cumprod if alphas is None else alphas).detach().to("cpu", torch.float32).clone()
    if getattr(model, "ztsnr", False) or getattr(shared.opts, "sd_noise_schedule", "") == "Zero Terminal SNR":
        alphas = sd_models.rescale_zero_terminal_snr_abar(alphas)
    return alphas


class A1111Backend(ModelBackend):
    def __init__(self, networks: str = "") -> None:
        """`networks`: the LoRAs/hypernetworks deliberately left active for the run (recorded)."""
        self.model = shared.sd_model
        self.networks = networks
        self.family = "sdxl" if self.model.is_sdxl else "sd2" if self.model.is_sd2 else "sd1"
        info = getattr(self.model, "sd_checkpoint_info", None)
        self.model_name = (
            getattr(info, "name_for_extra", None) or getattr(info, "model_name", "") or "webui-model"
        )
        self._tables = _token_tables(self.model)
        self.encoders = tuple(EncoderSpec(key, table.shape[1]) for key, table in self._tables)
        parameterization = "v" if getattr(self.model, "parameterization", "eps") == "v" else "eps"
        self.schedule = NoiseSchedule(_training_alphas(self.model), parameterization)
        self.device = devices.device
        self.dtype = devices.dtype_unet
        native = {"sdxl": 1024, "sd2": 768 if parameterization == "v" else 512, "sd1": 512}
        self.default_resolution = native[self.family]
        self.db = sd_hijack.model_hijack.embedding_db
        self._registered: dict[str, Embedding] = {}
        self._resolution = self.default_resolution

    vae_advice = (
        "Turn on Settings > VAE > 'Automatically revert VAE to 32-bit floats', start the WebUI with "
        "--no-half-vae, or pick another VAE (for SDXL: an fp16-fixed VAE)."
    )
    float32_advice = "start the WebUI with --no-half (the tab cannot change the WebUI's precision)"

    # -- ModelBackend --------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.cond_stage_model.tokenize([text])[0])

    def token_rows(self, token_ids: list[int]) -> Vectors:
        index = torch.tensor(token_ids, dtype=torch.long)
        return {
            key: table.detach()[index.to(table.device)].float().cpu().clone() for key, table in self._tables
        }

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self._resolution = pixels.shape[-1]
        return self._encode_all(pixels, devices.dtype_vae)

    @torch.no_grad()
    def encode_images_upcast(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The WebUI's own way out of a NaN VAE (its decode retry): bfloat16 when "Automatically
        convert VAE to bfloat16" is on, float32 when "Automatically revert VAE to 32-bit floats" is;
        the VAE goes back to its dtype afterwards."""
        if getattr(shared.opts, "auto_vae_precision_bfloat16", False) and devices.dtype_vae != torch.bfloat16:
            dtype = torch.bfloat16
        elif getattr(shared.opts, "auto_vae_precision", True) and devices.dtype_vae != torch.float32:
            dtype = torch.float32
        else:
            return None
        vae = self.model.first_stage_model
        vae.to(dtype)
        try:
            return self._encode_all(pixels, dtype)
        finally:
            vae.to(devices.dtype_vae)

    def _encode_all(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # ldm's encoding samples from the posterior with the global RNG: fork it so a run is reproducible
        # and the WebUI's own random state is left alone.
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(0)
            return torch.cat([self._encode(chunk, dtype).float() for chunk in pixels.split(4)])

    def _encode(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Scaled latents of [B, 3, H, W] pixels in [-1, 1], with the VAE in `dtype` and no autocast:
        under the WebUI's autocast the VAE's convs would run in float16 even with --no-half-vae."""
        with devices.without_autocast():
            return self.model.get_first_stage_encoding(
                self.model.encode_first_stage(pixels.to(devices.device, dtype))
            )

    def conditioning(self, prompts: list[str], embeddings: Mapping[str, Vectors]) -> Conditioning:
        for name, vectors in embeddings.items():
            self._register(name, vectors)
        with devices.autocast():
            if self.model.is_sdxl:
                batch = prompt_parser.SdConditioning(prompts, width=self._resolution, height=self._resolution)
                return self.model.get_learned_conditioning(batch)
            return self.model.cond_stage_model(prompts)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.model.apply_model(noisy, timesteps, cond)

    def frozen_modules(self) -> Iterable[torch.nn.Module]:
        return [self.model]

    def denoiser(self) -> torch.nn.Module:
        return self.model.model.diffusion_model

    def context(self, cond: Conditioning) -> torch.Tensor:
        return cond["crossattn"] if isinstance(cond, dict) else cond

    def existing_names(self) -> set[str]:
        return set(self.db.word_embeddings) | set(self.db.skipped_embeddings)

    def run_metadata(self) -> dict[str, str]:
        """What of the WebUI's state the vectors were trained under: the text layer clip skip
        picks (SD1; SDXL's CLIP-L only with "Clip skip SDXL"; SD2 has a fixed layer) and any
        LoRA or hypernetwork the user chose to keep active."""
        metadata = {"webui_networks": self.networks} if self.networks else {}
        if self.family == "sd1" or (
            self.family == "sdxl" and getattr(shared.opts, "sdxl_clip_l_skip", False)
        ):
            metadata["clip_skip"] = str(int(shared.opts.CLIP_stop_at_last_layers))
        return metadata

    @contextmanager
    def training(self, gradient_checkpointing: bool) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(frozen_parameters(self.frozen_modules()))
            stack.callback(self._unregister_all)
            if self.model.is_sdxl:
                stack.enter_context(self._sdxl_text_gradients())
            stack.enter_context(self.gradient_checkpointing(gradient_checkpointing))
            yield

    @contextmanager
    def gradient_checkpointing(self, enabled: bool) -> Iterator[None]:
        """The UNet's transformer, residual and attention blocks recompute their activations in
        backward. Not the WebUI's own switch (its Train tab's): that one covers ldm's blocks only,
        not SDXL's sgm ones, and its reentrant checkpoint changed what an SD1 run learned."""
        if not enabled:
            yield
            return
        with _checkpointed(_SGM_BLOCKS if self.model.is_sdxl else _LDM_BLOCKS):
            yield

    # -- helpers -------------------------------------------------------------------

    def _register(self, name: str, vectors: Vectors) -> None:
        """Splice `vectors` for `name`. Registered again whenever the database no longer holds
        this run's embedding: Extra Networks' Refresh reloads it from disk mid-run (that button
        is not behind the queue), which would otherwise leave the run without gradients."""
        embedding = self._registered.get(name)
        if embedding is None or self.db.word_embeddings.get(name) is not embedding:
            self._registered[name] = register_embedding(name, vectors)
        else:
            embedding.vec = _webui_vec(vectors)

    def _unregister_all(self) -> None:
        for name in self._registered:
            unregister_embedding(name)
        self._registered.clear()

    @contextmanager
    def _sdxl_text_gradients(self) -> Iterator[None]:
        """sgm runs non-trainable embedders under no_grad; mark the text encoders trainable while inside."""
        embedders = [e for e in self.model.conditioner.embedders if hasattr(e, "encode_embedding_init_text")]
        flags = [e.is_trainable for e in embedders]
        for embedder in embedders:
            embedder.is_trainable = True
        try:
            yield
        finally:
            for embedder, flag in zip(embedders, flags):
                embedder.is_trainable = flag


_LDM_BLOCKS = (
    "ldm.modules.attention.BasicTransformerBlock",
    "ldm.modules.diffusionmodules.openaimodel.ResBlock",
    "ldm.modules.diffusionmodules.openaimodel.AttentionBlock",
)
_SGM_BLOCKS = (
    "sgm.modules.attention.BasicTransformerBlock",
    "sgm.modules.diffusionmodules.openaimodel.ResBlock",
)


@contextmanager
def _checkpointed(paths: tuple[str, ...]) -> Iterator[None]:
    """Each class's `forward` becomes torch's non-reentrant checkpoint of its `_forward` (the same
    numbers; gradients reach the conditioning while the frozen weights need none) for the run."""
    import importlib

    from torch.utils.checkpoint import checkpoint

    classes = [
        getattr(importlib.import_module(module), name) for module, name in (p.rsplit(".", 1) for p in paths)
    ]
    stored = [cls.forward for cls in classes]

    def forward(self, *args, **kwargs):
        return checkpoint(self._forward, *args, use_reentrant=False, **kwargs)

    for cls in classes:
        cls.forward = forward
    try:
        yield
    finally:
        for cls, original in zip(classes, stored):
            cls.forward = original
