"""Stable Diffusion 1.x, 2.x and SDXL through diffusers, for headless use.

Pseudo-words are spliced in the way the WebUI does it: the prompt is split at
embedding names, each name occupies as many positions as it has vectors, and a
forward hook on the token-embedding layer overwrites those positions with the
trainable rows. Nothing is added to the tokenizer or the embedding matrix, so
the optimizer sees only the new vectors and the model stays bit-identical.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captinv.backends.base import Conditioning, EncoderSpec, ModelBackend, NoiseSchedule, Vectors
from captinv.backends.checkpoints import Prediction
from captinv.backends.chunks import Item, chunk_prompt
from captinv.backends.diffusers_loading import load_pipeline, model_dtype
from captinv.errors import ConfigError, ModelLoadError, UnsupportedModelError, option
from captinv.hub import ModelSource, locate
from captinv.latents import encode_finite

log = logging.getLogger(__name__)

PACKAGED_MODELS = {"miniworld": Path(__file__).resolve().parent.parent / "data" / "miniworld"}
_ENCODE_CHUNK = 4
_SINGLE_FILE_HINT = (
    " (diffusers builds a single file from its family's config on the Hugging Face Hub; offline, give a "
    "local diffusers folder of the same family with --model-config)"
)


@dataclass
class _TextEncoder:
    key: str
    tokenizer: Any
    model: torch.nn.Module
    penultimate: bool  # SDXL conditions on the second-to-last hidden state

    @property
    def length(self) -> int:
        """Positions per prompt (77): the encoder's, whatever the tokenizer's config says."""
        return self.model.config.max_position_embeddings


@dataclass
class SDXLConditioning:
    hidden: torch.Tensor  # [B, 77, 2048]
    pooled: torch.Tensor  # [B, 1280]


def _name_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(names, key=len, reverse=True)
    if not ordered:
        return None
    alternatives = "|".join(re.escape(name) for name in ordered)
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])", re.IGNORECASE)


@contextmanager
def _spliced(
    layer: torch.nn.Module, batch: torch.Tensor, position: torch.Tensor, rows: torch.Tensor
) -> Iterator[None]:
    def replace(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output.index_put((batch, position), rows.to(output.dtype))

    handle = layer.register_forward_hook(replace) if rows.numel() else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _is_inpainting(pipe: Any) -> bool:
    """Whether the UNet takes a mask and masked-image latents besides x_t; refuses any other extra input.

    Inpainting UNets (9 channels) are trained as the WebUI's own trainer does: the image
    conditioning says "repaint everything". instruct-pix2pix (8), depth (5), upscalers and
    unCLIP condition on inputs a text-to-image run does not have.
    """
    latent = pipe.vae.config.latent_channels
    channels = pipe.unet.config.in_channels
    if channels == 2 * latent:
        raise UnsupportedModelError(
            "This is an instruct-pix2pix model (its UNet also reads an input image); captinv trains text-to-image "
            "and inpainting models."
        )
    extra = pipe.unet.config.class_embed_type or pipe.unet.config.addition_embed_type not in (
        None,
        "text_time",
    )
    if channels not in (latent, 2 * latent + 1) or extra:
        raise UnsupportedModelError(
            f"{type(pipe).__name__}'s UNet takes {channels} input channels"
            f"{' and extra embeddings' if extra else ''}: not a Stable Diffusion text-to-image or inpainting "
            "model captinv can train."
        )
    return channels == 2 * latent + 1


class DiffusersBackend(ModelBackend):
    """A `StableDiffusionPipeline` or `StableDiffusionXLPipeline`, frozen."""

    vae_advice = (
        "Its weights give NaN/inf even in float32: use another checkpoint, or a diffusers folder with a "
        "working vae/."
    )
    float32_advice = "--no-mixed-precision (loads the model in float32)"

    def __init__(self, pipe: Any, model_name: str = "") -> None:
        self.pipe = pipe
        self.model_name = model_name or type(pipe).__name__
        self._encoders = self._text_encoders(pipe)
        self.unet = pipe.unet
        self.inpainting = _is_inpainting(pipe)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.family = self._family()
        self.encoders = tuple(
            EncoderSpec(enc.key, enc.model.get_input_embeddings().weight.shape[1]) for enc in self._encoders
        )
        from diffusers import DDPMScheduler

        # The sampling scheduler's config (betas, zero-terminal-SNR rescaling, prediction type) is
        # the schedule the model samples with; DDPM gives its training form.
        train_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        prediction = train_schedule.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise UnsupportedModelError(
                f"Prediction type {prediction!r} is not supported (only epsilon and v)."
            )
        self.schedule = NoiseSchedule(
            train_schedule.alphas_cumprod.to(torch.float32).clone(), "eps" if prediction == "epsilon" else "v"
        )
        self.prediction_source = "the model's scheduler config"
        self._placeholder = self._encoders[0].tokenizer.convert_tokens_to_ids("*</w>")
        self._plans: dict[tuple, tuple[list[list[int]], list[tuple[int, int, str]]]] = {}
        self._vae_float32 = False
        self._image_conditioning_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.default_resolution = int(self.unet.config.sample_size) * self.vae_scale
        for module in self.frozen_modules():
            module.eval()

    @staticmethod
    def _text_encoders(pipe: Any) -> list[_TextEncoder]:
        first = getattr(pipe, "text_encoder", None)
        second = getattr(pipe, "text_encoder_2", None)
        if first is None or getattr(pipe, "unet", None) is None:
            raise UnsupportedModelError(
                f"{type(pipe).__name__} is not a Stable Diffusion 1.x/2.x/XL pipeline (needs a UNet and a CLIP text "
                "encoder); SD3, Flux and SDXL refiners are not supported (for SDXL, load the base model)."
            )
        if second is None:
            return [_TextEncoder("emb_params", pipe.tokenizer, first, penultimate=False)]
        return [
            _TextEncoder("clip_l", pipe.tokenizer, first, penultimate=True),
            _TextEncoder("clip_g", pipe.tokenizer_2, second, penultimate=True),
        ]

    def describe(self) -> str:
        """One line on what was loaded, for the CLI: the variant decides what training aims at."""
        prediction = "ε" if self.schedule.parameterization == "eps" else "v"
        ztsnr = ", zero terminal SNR" if self.schedule.alphas_cumprod[-1] < 1e-6 else ""
        inpainting = ", inpainting" if self.inpainting else ""
        return (
            f"{self.model_name}: {self.family}{inpainting}, {prediction}-prediction (from "
            f"{self.prediction_source}){ztsnr}, {self.default_resolution} px, {str(self.dtype).removeprefix('torch.')}"
        )

    def _family(self) -> str:
        if len(self._encoders) == 2:
            return "sdxl"
        width = self._encoders[0].model.get_input_embeddings().weight.shape[1]
        return "sd2" if width == 1024 else "sd1"

    # -- the ModelBackend interface ------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self._encoders[0].tokenizer(text, add_special_tokens=False).input_ids)

    def token_rows(self, token_ids: list[int]) -> Vectors:
        index = torch.tensor(token_ids, dtype=torch.long)
        return {
            enc.key: enc.model.get_input_embeddings()
            .weight.detach()[index.to(self.device)]
            .float()
            .cpu()
            .clone()
            for enc in self._encoders
        }

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        upcast = self._vae_float32 or (
            bool(getattr(vae.config, "force_upcast", False)) and self.dtype != torch.float32
        )
        return self._encode(pixels, torch.float32 if upcast else vae.dtype)

    def encode_images_upcast(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """Float32, as diffusers' pipelines do for a VAE marked `force_upcast`; kept for later encodes
        once it was needed (the WebUI's auto VAE precision switch works the same way)."""
        if self._vae_float32 or self.pipe.vae.dtype == torch.float32:
            return None
        self._vae_float32 = True
        return self._encode(pixels, torch.float32)

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Scaled latent means of `pixels` with the VAE temporarily in `dtype`, outside any autocast."""
        vae = self.pipe.vae
        original = vae.dtype
        vae.to(dtype)
        try:
            with torch.autocast(self.device.type, enabled=False):
                chunks = [
                    vae.encode(chunk.to(self.device, dtype)).latent_dist.mean.float()
                    for chunk in pixels.split(_ENCODE_CHUNK)
                ]
        finally:
            vae.to(original)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (torch.cat(chunks) - shift) * vae.config.scaling_factor

    def conditioning(self, prompts: list[str], embeddings: Mapping[str, Vectors]) -> Conditioning:
        """[B, 77·k, C] for prompts of up to k chunks; SDXL's pooled vector comes from the first chunk,
        as in the WebUI."""
        lookup = {name.lower(): vectors for name, vectors in embeddings.items()}
        hidden, pooled = [], None
        for enc in self._encoders:
            ids, row, position, rows = self._layout(enc, prompts, lookup)
            with _spliced(enc.model.get_input_embeddings(), row, position, rows):
                output = enc.model(ids, output_hidden_states=enc.penultimate)
            states = output.hidden_states[-2] if enc.penultimate else output.last_hidden_state
            hidden.append(states.reshape(len(prompts), -1, states.shape[-1]))
            if enc.key == "clip_g":
                pooled = output.text_embeds.reshape(len(prompts), -1, output.text_embeds.shape[-1])[:, 0]
        if pooled is None:
            return hidden[0]
        return SDXLConditioning(torch.cat(hidden, dim=-1), pooled)

    @torch.no_grad()
    def text_encodings(self, prompts: list[str], padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Without `padding`, encoded only up to the batch's last EOS: the encoder is causal, so the
        rows up to each prompt's EOS are those of the full 77-position conditioning."""
        hidden, own = [], None
        for enc in self._encoders:
            ids = self._layout(enc, prompts, {})[0]
            ends = (ids == enc.tokenizer.eos_token_id).int().argmax(dim=1)
            length = ids.shape[1] if padding else int(ends.max()) + 1
            output = enc.model(ids[:, :length], output_hidden_states=enc.penultimate)
            hidden.append(output.hidden_states[-2] if enc.penultimate else output.last_hidden_state)
            own = torch.arange(length, device=ids.device) <= ends[:, None]
        return torch.cat(hidden, dim=-1), own

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if isinstance(cond, SDXLConditioning):
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": self._time_ids(noisy)}
            cond = cond.hidden
        sample = noisy.to(self.dtype)
        if self.inpainting:
            sample = torch.cat([sample, self._image_conditioning(noisy).to(self.dtype)], dim=1)
        return self.unet(
            sample,
            timesteps.to(self.device),
            encoder_hidden_states=cond.to(self.dtype),
            **kwargs,
        ).sample

    def _image_conditioning(self, noisy: torch.Tensor) -> torch.Tensor:
        """[B, 1 + C, h, w]: a mask of ones and the latents of a uniform grey image, i.e. "repaint
        everything", the conditioning the WebUI gives an inpainting model in txt2img and in its own
        textual-inversion trainer (`processing.txt2img_image_conditioning`)."""
        size = (noisy.shape[-2], noisy.shape[-1])
        if size not in self._image_conditioning_cache:
            grey = torch.zeros(1, 3, *(side * self.vae_scale for side in size))  # mid-grey is 0 in [-1, 1]
            latents = encode_finite(self, grey).to(self.device, torch.float32)
            self._image_conditioning_cache[size] = torch.cat(
                [torch.ones_like(latents[:, :1]), latents], dim=1
            )
        return self._image_conditioning_cache[size].expand(noisy.shape[0], -1, -1, -1)

    def frozen_modules(self) -> Iterable[torch.nn.Module]:
        return [self.unet, self.pipe.vae, *(enc.model for enc in self._encoders)]

    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def context(self, cond: Conditioning) -> torch.Tensor:
        return cond.hidden if isinstance(cond, SDXLConditioning) else cond

    @contextmanager
    def gradient_checkpointing(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            self.unet.disable_gradient_checkpointing()

    # -- helpers -------------------------------------------------------------------

    def _prompt_plan(
        self, enc: _TextEncoder, prompt: str, counts: tuple[tuple[str, int], ...]
    ) -> tuple[list[list[int]], list[tuple[int, int, str]]]:
        """Token ids of each 77-position chunk of one prompt, and (chunk, first position, name) of
        each embedding in it; chunked as the WebUI chunks (see `chunks`).

        Depends only on the text and the embeddings' vector counts, so it is computed once per
        template and reused every step: tokenizing is pure overhead of a training step.
        """
        key = (enc.key, prompt, counts)
        if key in self._plans:
            return self._plans[key]
        tokenizer = enc.tokenizer
        lengths = dict(counts)
        pattern = _name_pattern(lengths)
        items: list[Item] = []
        for i, piece in enumerate(pattern.split(prompt) if pattern else [prompt]):
            if i % 2:
                items.append((piece.lower(), lengths[piece.lower()]))
            elif piece.strip():
                items += tokenizer(piece, add_special_tokens=False).input_ids
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        chunks = chunk_prompt(items, comma, self._placeholder)
        pad = [tokenizer.pad_token_id] * (enc.length - 2)
        ids = [
            [tokenizer.bos_token_id, *c.tokens, tokenizer.eos_token_id, *pad][: enc.length] for c in chunks
        ]
        slots = [(index, offset + 1, name) for index, c in enumerate(chunks) for offset, name in c.slots]
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[key] = (ids, slots)
        return ids, slots

    def _layout(
        self, enc: _TextEncoder, prompts: list[str], lookup: Mapping[str, Vectors]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids [B·k, 77] for the prompts' k chunks each, and where each embedding's rows go.

        A prompt with fewer chunks than the longest gets empty ones (BOS, EOS, padding), as the
        WebUI pads a batch.
        """
        counts = tuple(sorted((name, vectors[enc.key].shape[0]) for name, vectors in lookup.items()))
        plans = [self._prompt_plan(enc, prompt, counts) for prompt in prompts]
        per_prompt = max(len(ids) for ids, _ in plans)
        empty = self._prompt_plan(enc, "", ())[0][0]
        all_ids, row, position, rows = [], [], [], []
        for b, (ids, slots) in enumerate(plans):
            all_ids += ids + [empty] * (per_prompt - len(ids))
            for chunk, start, name in slots:
                vectors = lookup[name][enc.key]
                row += [b * per_prompt + chunk] * vectors.shape[0]
                position += range(start, start + vectors.shape[0])
                rows.append(vectors)
        width = enc.model.get_input_embeddings().weight.shape[1]
        stacked = torch.cat(rows).to(self.device) if rows else torch.zeros(0, width, device=self.device)
        as_long = {"dtype": torch.long, "device": self.device}
        return (
            torch.tensor(all_ids, **as_long),
            torch.tensor(row, **as_long),
            torch.tensor(position, **as_long),
            stacked,
        )

    def _time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        height, width = (side * self.vae_scale for side in latents.shape[-2:])
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=self.dtype, device=self.device)
        return ids.expand(latents.shape[0], -1)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        embeddings: Mapping[str, Vectors],
        *,
        steps: int = 20,
        guidance: float = 7.0,
        seed: int = 0,
        resolution: int | None = None,
    ) -> Any:
        """One image for `prompt` with the embeddings spliced in (previews, the CLI demo).

        The empty negative prompt is padded to the prompt's chunks, as the WebUI pads it; an
        inpainting model repaints a grey image under a full mask (the WebUI's txt2img for it).
        """
        cond, uncond = self.conditioning([prompt], embeddings), self.conditioning([""], {})
        chunks = self.context(cond).shape[1] // self.context(uncond).shape[1]
        if isinstance(cond, SDXLConditioning):
            kwargs = {
                "prompt_embeds": cond.hidden,
                "pooled_prompt_embeds": cond.pooled,
                "negative_prompt_embeds": uncond.hidden.repeat(1, chunks, 1),
                "negative_pooled_prompt_embeds": uncond.pooled,
            }
        else:
            kwargs = {"prompt_embeds": cond, "negative_prompt_embeds": uncond.repeat(1, chunks, 1)}
        side = resolution or self.default_resolution
        pipe, extra = self.pipe, {}
        if self.inpainting:
            from diffusers import AutoPipelineForInpainting
            from PIL import Image

            pipe = AutoPipelineForInpainting.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            extra = {
                "image": Image.new("RGB", (side, side), (128, 128, 128)),
                "mask_image": Image.new("L", (side, side), 255),
                "strength": 1.0,
            }
        result = pipe(
            **{k: v.to(self.dtype) for k, v in kwargs.items()},
            **extra,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            height=side,
            width=side,
        )
        return result.images[0]

    # -- loading -------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        spec: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        mixed_precision: bool = True,
        prediction: Prediction | None = None,
        config: str | None = None,
    ) -> DiffusersBackend:
        """From a diffusers folder, a hub id, a single .safetensors checkpoint, or 'miniworld'.

        The model is float16 on a GPU with `mixed_precision`, float32 otherwise (see `model_dtype`);
        `prediction` overrides the detected ε/v; `config` is the diffusers config (folder or hub id)
        a single file is built with.
        """
        device = device_for(device)
        dtype = dtype or model_dtype(device, mixed_precision)
        source = locate_model(spec)
        path = Path(source.spec)
        try:
            loaded = load_pipeline(source, dtype, prediction, config)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            hint = _SINGLE_FILE_HINT if path.is_file() and not config else ""
            raise ModelLoadError(f"Could not load the model {spec!r}: {err}".splitlines()[0] + hint) from err
        loaded.pipe.set_progress_bar_config(disable=True)
        backend = cls(loaded.pipe.to(device), model_name=Path(str(spec)).stem if path.exists() else spec)
        backend.prediction_source = loaded.prediction_source
        return backend


def locate_model(spec: str) -> ModelSource:
    """Where the model `spec` is, checked before loading (see `captinv.hub`)."""
    if spec in PACKAGED_MODELS:
        return ModelSource(str(PACKAGED_MODELS[spec]), local_only=True)
    return locate(
        spec,
        what="model",
        marker="model_index.json",
        fix=f"Give a diffusers folder, a .safetensors checkpoint or a downloaded model id with {option('model')}.",
    )


def device_for(spec: str | torch.device | None) -> torch.device:
    """The device `spec` names (default: cuda if available), refused at once when it is not there."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"{option('device')} '{spec}' is not a device; use cpu, cuda, cuda:1, mps ...", field="device"
        ) from err
    available = ["cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]
    for kind in ("mps", "xpu"):
        module = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
        if module is not None and module.is_available():
            available.append(f"{kind}:0")
    if f"{device.type}:{device.index or 0}" not in available + ["cpu:0"]:
        raise ConfigError(
            f"{option('device')} '{spec}' is not available on this machine (it has: {', '.join(available)}).",
            field="device",
        )
    return device
