"""Tiny Kandinsky 5 components (diffusers' test sizes), built offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
]


# diffusers' tests/pipelines/kandinsky5/test_kandinsky5_t2i.py sizes, shared by the K5 tests
VAE_TINY = dict(act_fn="silu", block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                force_upcast=True, in_channels=3, latent_channels=16, layers_per_block=1,
                mid_block_add_attention=False, norm_num_groups=32, out_channels=3, sample_size=128,
                scaling_factor=0.3611, shift_factor=0.1159, up_block_types=["UpDecoderBlock2D"] * 2,
                use_post_quant_conv=False, use_quant_conv=False)  # fmt: skip
DIT_TINY = dict(in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=16, out_visual_dim=16,
                patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2,
                axes_dims=(1, 1, 2))  # fmt: skip


def qwen_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with Qwen's special tokens (no merges: one token per byte)."""
    from tiny import _byte_chars
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIAL)
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.save_pretrained(folder)
    return fast


class ProcessorShim:
    """What diffusers' T2I pipeline calls on its Qwen2VLProcessor (text only), over a plain tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, images=None, videos=None, **kw):
        return self.tokenizer(text, **kw)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


# diffusers' tests/pipelines/kandinsky5/test_kandinsky5_i2i.py: a VAE of 8x (four blocks), as the real one
VAE_I2I_TINY = {**VAE_TINY, "block_out_channels": [32, 64, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64}  # fmt: skip


def real_processor(tokenizer):
    """transformers' own Qwen2VLProcessor over `tokenizer` and the PIL image processor (the oracle).

    transformers 5 refuses to build it without torchvision only because its class check looks the video
    processor up; with no video processor given, nothing needs torchvision, so the check is skipped."""
    from unittest import mock

    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda *a: None):
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                                video_processor=None)  # fmt: skip


def i2i_components(workdir: Path) -> dict:
    """The editing model's tiny parts: the T2I ones with the 8x VAE, a visual_cond DiT (33 input channels)
    and Qwen's image token ids those of the tiny tokenizer (its vision tower reads the source image)."""
    import diffusers

    c = t2i_components(workdir, image_token_ids=True)
    torch.manual_seed(0)
    c["vae"] = diffusers.AutoencoderKL(**VAE_I2I_TINY).eval()
    torch.manual_seed(0)
    dit = diffusers.Kandinsky5Transformer3DModel(**DIT_TINY, visual_cond=True).eval()
    from tiny import _jitter

    _jitter(dit, 0.1)
    c["transformer"] = dit
    return c


def t2i_components(workdir: Path, image_token_ids: bool = False) -> dict:
    import diffusers
    from tiny import _jitter, clip_tokenizer
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**VAE_TINY)
    h = 32
    torch.manual_seed(0)
    qcfg = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": h,
            "intermediate_size": h,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
        },
        vision_config={
            "depth": 2,
            "hidden_size": h,
            "intermediate_size": h,
            "num_heads": 2,
            "out_hidden_size": h,
        },
        hidden_size=h,
        vocab_size=512,
        # the tiny tokenizer's ids (<|vision_start|> 259, <|vision_end|> 260, <|image_pad|> 261) for editing;
        # text to image keeps the ids it was written with (its prompts hold no vision tokens)
        **(dict(vision_start_token_id=259, vision_end_token_id=260, image_token_id=261)
           if image_token_ids else
           dict(vision_end_token_id=261, vision_start_token_id=260, image_token_id=262, vision_token_id=262)),
    )  # fmt: skip
    qwen = Qwen2_5_VLForConditionalGeneration(qcfg).eval()
    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=16,
            intermediate_size=16,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=1000,
            projection_dim=16,
        )
    ).eval()
    torch.manual_seed(0)
    dit = diffusers.Kandinsky5Transformer3DModel(**DIT_TINY, visual_cond=False).eval()
    _jitter(dit, 0.1)
    return {
        "vae": vae.eval(),
        "text_encoder": qwen,
        "tokenizer": qwen_tokenizer(workdir / "qwen_tok"),
        "text_encoder_2": clip,
        "tokenizer_2": clip_tokenizer(workdir / "clip_tok"),
        "transformer": dit,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


__all__ = ["ProcessorShim", "i2i_components", "json", "qwen_tokenizer", "real_processor", "t2i_components"]


# the official K5 model_index.json components (T2I and I2I agree): the tokenizer is a Qwen2VLProcessor
OFFICIAL_CLASSES = {
    "transformer": ("diffusers", "Kandinsky5Transformer3DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
    "tokenizer": ("transformers", "Qwen2VLProcessor"),
    "text_encoder_2": ("transformers", "CLIPTextModel"),
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
}


def save_official_layout(pipe, folder: Path, class_name: str) -> Path:
    """`pipe`'s components (a diffusers K5 pipeline) saved in the official repo layout, with the official
    model_index.json naming `class_name`; the processor's image config too where it has one."""
    for name in OFFICIAL_CLASSES:
        comp = getattr(pipe, name)
        getattr(comp, "tokenizer", comp).save_pretrained(folder / name)
    image_processor = getattr(pipe.tokenizer, "image_processor", None)
    if class_name == "Kandinsky5I2IPipeline" and image_processor is not None:
        image_processor.save_pretrained(folder / "tokenizer")
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1",
             **{k: list(v) for k, v in OFFICIAL_CLASSES.items()}}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
