"""Tiny, seeded, random-weight instances of the real model classes.

In the spirit of diffusers' `get_dummy_components`: the same UNet, VAE and CLIP
classes as Stable Diffusion 1.x (ε), 2.x (v-prediction, 1024-wide text) and
SDXL (two text encoders, pooled vector, time ids), only small; and the variants
captinv supports (inpainting) or refuses (instruct-pix2pix, the SDXL refiner,
SD3). The tokenizer is
the real CLIP BPE from open_clip's bundled vocabulary, so token ids and
tokenisation are exactly those of the released models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from captinv.clip_vocab import clip_tokenizer

VOCAB = 49408
BOS, EOS = 49406, 49407


def _text_config(width: int, heads: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=2 * width,
        num_attention_heads=heads,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=extra.pop("pad_token_id", EOS),
        **extra,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def _scheduler(prediction: str) -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction,
    )


def _unet(in_channels: int = 4, **arch) -> UNet2DConditionModel:
    """A two-level UNet on 16x16 latents; `arch` sets the family's block types and conditioning.

    `in_channels` 9 is an inpainting UNet (x_t, mask, masked-image latents), 8 instruct-pix2pix.
    """
    common = {"block_out_channels": (16, 32), "layers_per_block": 1, "sample_size": 16}
    return UNet2DConditionModel(out_channels=4, norm_num_groups=8, in_channels=in_channels, **common, **arch)


def sd_pipeline(
    tmp: Path,
    *,
    width: int = 32,
    prediction: str = "epsilon",
    in_channels: int = 4,
    pipeline_class: type = StableDiffusionPipeline,
) -> StableDiffusionPipeline:
    """SD1-like (width 32) or SD2-like (width 1024) pipeline, ε or v; inpainting with 9 channels."""
    torch.manual_seed(0)
    unet = _unet(
        in_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
    )
    heads = 16 if width >= 1024 else 4
    pad = {"pad_token_id": 0} if width >= 1024 else {}
    tokenizer = clip_tokenizer(tmp / f"tokenizer-{width}", pad_token="!" if pad else "<|endoftext|>")
    return pipeline_class(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(width, heads, **pad)).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(prediction),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


_WIDTH_L, _WIDTH_G = 32, 48


def _sdxl_unet(context: int, time_ids: int) -> UNet2DConditionModel:
    """SDXL's UNet layout: `context` wide cross-attention, `time_ids` size/crop (and aesthetic) numbers
    embedded beside the pooled bigG vector."""
    time_dim = 8
    return _unet(
        4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * time_dim + _WIDTH_G,
        cross_attention_dim=context,
    )


def _big_g() -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        _text_config(_WIDTH_G, 4, pad_token_id=0, projection_dim=_WIDTH_G)
    ).eval()


def sdxl_pipeline(tmp: Path, *, prediction: str = "epsilon") -> StableDiffusionXLPipeline:
    """SDXL-like: CLIP-L-like 32 wide + bigG-like 48 wide with projection; text_time conditioning."""
    torch.manual_seed(0)
    unet = _sdxl_unet(_WIDTH_L + _WIDTH_G, time_ids=6)
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(_WIDTH_L, 4)).eval(),
        text_encoder_2=_big_g(),
        tokenizer=clip_tokenizer(tmp / "tokenizer-l"),
        tokenizer_2=clip_tokenizer(tmp / "tokenizer-g", pad_token="!"),
        unet=unet,
        scheduler=_scheduler(prediction),
    )


def sdxl_refiner_pipeline(tmp: Path) -> StableDiffusionXLImg2ImgPipeline:
    """SDXL-refiner-like: only the bigG text encoder, aesthetic-score conditioning."""
    torch.manual_seed(0)
    return StableDiffusionXLImg2ImgPipeline(
        vae=_vae(),
        text_encoder=None,
        text_encoder_2=_big_g(),
        tokenizer=None,
        tokenizer_2=clip_tokenizer(tmp / "tokenizer-g", pad_token="!"),
        unet=_sdxl_unet(_WIDTH_G, time_ids=5),
        scheduler=_scheduler("epsilon"),
        requires_aesthetics_score=True,
    )


def sd3_pipeline(tmp: Path) -> Any:
    """SD3-like: an MMDiT transformer instead of a UNet, two CLIP encoders, no T5. Imported here: on
    the version floor (transformers 4.37) diffusers cannot import its SD3 pipeline at all, and a
    refusal of SD3 needs no SD3 there."""
    try:
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    except (ImportError, RuntimeError) as err:
        pytest.skip(f"this diffusers/transformers pair cannot build an SD3 pipeline: {err}")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=CLIPTextModelWithProjection(_text_config(32, 4, projection_dim=32)).eval(),
        tokenizer=clip_tokenizer(tmp / "tokenizer-l"),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32, 4, projection_dim=32)).eval(),
        tokenizer_2=clip_tokenizer(tmp / "tokenizer-l"),
        text_encoder_3=None,
        tokenizer_3=None,
    )


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "on", "sofa"]


def tiny_blip(folder: Path, favourite: str) -> str:
    """A tiny BLIP saved to `folder` whose language head strongly prefers one token, so decoding is
    predictable."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    (folder / "vocab.txt").write_text("\n".join(BLIP_WORDS))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 1}
    config = BlipConfig(
        text_config=small
        | {"vocab_size": len(BLIP_WORDS), "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config=small | {"image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias.zero_()
        model.text_decoder.cls.predictions.bias[BLIP_WORDS.index(favourite)] = 1e4
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
