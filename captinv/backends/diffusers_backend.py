"""Stable Diffusion 1.x, 2.x and SDXL through diffusers, for headless use.

Pseudo-words are spliced in the way the WebUI does it: the prompt is split at
embedding names, each name occupies as many positions as it has vectors, and a
forward hook on the token-embedding layer overwrites those positions with the
trainable rows. Nothing is added to the tokenizer or the embedding matrix, so
the optimizer sees only the new vectors and the model stays bit-identical.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captinv.backends.base import Conditioning, EncoderSpec, ModelBackend, NoiseSchedule, Vectors
from captinv.errors import ModelLoadError, UnsupportedModelError

log = logging.getLogger(__name__)

PACKAGED_MODELS = {"miniworld": Path(__file__).resolve().parent.parent / "data" / "miniworld"}
_ENCODE_CHUNK = 4


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


class DiffusersBackend(ModelBackend):
    """A `StableDiffusionPipeline` or `StableDiffusionXLPipeline`, frozen."""

    def __init__(self, pipe: Any, model_name: str = "") -> None:
        self.pipe = pipe
        self.model_name = model_name or type(pipe).__name__
        self.unet = pipe.unet
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self._encoders = self._text_encoders(pipe)
        self.family = self._family()
        self.encoders = tuple(
            EncoderSpec(enc.key, enc.model.get_input_embeddings().weight.shape[1]) for enc in self._encoders
        )
        from diffusers import DDPMScheduler

        train_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        prediction = train_schedule.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise UnsupportedModelError(
                f"Prediction type {prediction!r} is not supported (only epsilon and v)."
            )
        self.schedule = NoiseSchedule(
            train_schedule.alphas_cumprod.to(torch.float32).clone(), "eps" if prediction == "epsilon" else "v"
        )
        self._placeholder = self._encoders[0].tokenizer.convert_tokens_to_ids("*</w>")
        self._plans: dict[tuple, tuple[list[int], list[tuple[int, str]]]] = {}
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
                "encoder); SD3, Flux and SDXL refiners are not supported."
            )
        if second is None:
            return [_TextEncoder("emb_params", pipe.tokenizer, first, penultimate=False)]
        return [
            _TextEncoder("clip_l", pipe.tokenizer, first, penultimate=True),
            _TextEncoder("clip_g", pipe.tokenizer_2, second, penultimate=True),
        ]

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

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        upcast = bool(getattr(vae.config, "force_upcast", False)) and self.dtype != torch.float32
        dtype = torch.float32 if upcast else vae.dtype
        original = vae.dtype
        vae.to(dtype)
        try:
            chunks = [
                vae.encode(chunk.to(self.device, dtype)).latent_dist.mean.float()
                for chunk in pixels.split(_ENCODE_CHUNK)
            ]
        finally:
            vae.to(original)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (torch.cat(chunks) - shift) * vae.config.scaling_factor

    def conditioning(self, prompts: list[str], embeddings: Mapping[str, Vectors]) -> Conditioning:
        lookup = {name.lower(): vectors for name, vectors in embeddings.items()}
        hidden, pooled = [], None
        for enc in self._encoders:
            ids, batch, position, rows = self._layout(enc, prompts, lookup)
            with _spliced(enc.model.get_input_embeddings(), batch, position, rows):
                output = enc.model(ids, output_hidden_states=enc.penultimate)
            hidden.append(output.hidden_states[-2] if enc.penultimate else output.last_hidden_state)
            if enc.key == "clip_g":
                pooled = output.text_embeds
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
        return self.unet(
            noisy.to(self.dtype),
            timesteps.to(self.device),
            encoder_hidden_states=cond.to(self.dtype),
            **kwargs,
        ).sample

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
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """Token ids of one prompt and (first position, name) of each embedding in it.

        Depends only on the text and the embeddings' vector counts, so it is computed once per
        template and reused every step: tokenizing is pure overhead of a training step.
        """
        key = (enc.key, prompt, counts)
        if key in self._plans:
            return self._plans[key]
        tokenizer, room = enc.tokenizer, enc.length - 2
        lengths = dict(counts)
        pattern = _name_pattern(lengths)
        ids: list[int] = []
        slots: list[tuple[int, str]] = []
        for i, piece in enumerate(pattern.split(prompt) if pattern else [prompt]):
            if i % 2 == 0:
                ids += tokenizer(piece, add_special_tokens=False).input_ids if piece.strip() else []
                continue
            count = lengths[piece.lower()]
            if len(ids) + count > room:
                break  # an embedding that does not fit is dropped whole, as in the WebUI
            slots.append((len(ids) + 1, piece.lower()))
            ids += [self._placeholder] * count
        ids = [tokenizer.bos_token_id, *ids[:room], tokenizer.eos_token_id]
        plan = (ids + [tokenizer.pad_token_id] * (enc.length - len(ids)), slots)
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _layout(
        self, enc: _TextEncoder, prompts: list[str], lookup: Mapping[str, Vectors]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids for each prompt and where each embedding's rows go."""
        counts = tuple(sorted((name, vectors[enc.key].shape[0]) for name, vectors in lookup.items()))
        all_ids, batch, position, rows = [], [], [], []
        for b, prompt in enumerate(prompts):
            ids, slots = self._prompt_plan(enc, prompt, counts)
            all_ids.append(ids)
            for start, name in slots:
                vectors = lookup[name][enc.key]
                batch += [b] * vectors.shape[0]
                position += range(start, start + vectors.shape[0])
                rows.append(vectors)
        width = enc.model.get_input_embeddings().weight.shape[1]
        stacked = torch.cat(rows).to(self.device) if rows else torch.zeros(0, width, device=self.device)
        as_long = {"dtype": torch.long, "device": self.device}
        return (
            torch.tensor(all_ids, **as_long),
            torch.tensor(batch, **as_long),
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
        """One image for `prompt` with the embeddings spliced in (previews, the CLI demo)."""
        cond, uncond = self.conditioning([prompt], embeddings), self.conditioning([""], {})
        if isinstance(cond, SDXLConditioning):
            kwargs = {
                "prompt_embeds": cond.hidden,
                "pooled_prompt_embeds": cond.pooled,
                "negative_prompt_embeds": uncond.hidden,
                "negative_pooled_prompt_embeds": uncond.pooled,
            }
        else:
            kwargs = {"prompt_embeds": cond, "negative_prompt_embeds": uncond}
        side = resolution or self.default_resolution
        result = self.pipe(
            **{k: v.to(self.dtype) for k, v in kwargs.items()},
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
        cls, spec: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DiffusersBackend:
        """From a diffusers folder, a hub id, a single .safetensors checkpoint, or 'miniworld'."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        path = PACKAGED_MODELS.get(spec, Path(spec).expanduser())
        try:
            pipe = _load_pipeline(path if path.exists() else spec, dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelLoadError(f"Could not load the model {spec!r}: {err}") from err
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), model_name=Path(str(spec)).stem if path.exists() else spec)


def _load_pipeline(source: Path | str, dtype: torch.dtype) -> Any:
    import diffusers

    if isinstance(source, Path) and source.is_file():
        from safetensors import safe_open

        with safe_open(str(source), "pt") as handle:
            is_xl = any(key.startswith("conditioner.embedders.1") for key in handle.keys())
        pipeline_class = diffusers.StableDiffusionXLPipeline if is_xl else diffusers.StableDiffusionPipeline
        return pipeline_class.from_single_file(str(source), torch_dtype=dtype)
    extra: dict[str, Any] = {}
    index = Path(source) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == "StableDiffusionPipeline":
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return diffusers.DiffusionPipeline.from_pretrained(str(source), torch_dtype=dtype, **extra)
