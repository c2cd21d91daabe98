"""The synthetic checkpoint's parts: tokenizer, config, processor, and the folder they are saved as.

A `ModelSpec` fixes the architecture (transformers' Florence2ForConditionalGeneration at small
width); `new_model` builds it with random weights, `save_folder` writes a complete native-layout
checkpoint (config, generation config, safetensors, tokenizer, processor) that
`Florence2ForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load like
any Florence-2 checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from export.embedded import GENERATION_DEFAULTS, PREPROCESSOR
from export.vocabulary import build_tokenizer as _bpe_tokenizer
from runtime.tasks import DEFAULT_POST_PROCESSOR_CONFIG, TASKS

from .scenes import COLOURS, SHAPES, WORDS

# Answers here are at most ~60 tokens; 256 decoder positions leave room and keep the table small.
MAX_LENGTH = 256


@dataclass(frozen=True)
class ModelSpec:
    image_size: int = 128  # a multiple of 32; image tokens = (image_size / 32) ** 2 + 1 (17 here)
    vision_dims: tuple[int, ...] = (32, 64, 128, 192)
    vision_heads: tuple[int, ...] = (1, 2, 4, 6)  # head dim 32, as in Florence-2
    vision_depths: tuple[int, ...] = (1, 1, 2, 1)
    window: int = 4  # divides every stage's grid at 128 px (32, 16, 8, 4)
    d_model: int = 192
    encoder_layers: int = 3
    decoder_layers: int = 3
    heads: int = 3  # head dim 64, as in Florence-2
    ffn: int = 768
    bpe_vocab: int = 1200  # enough that every scene word is one token

    def check(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (DaViT strides 4, 2, 2, 2); got {self.image_size}")
        if (self.image_size // 4) % self.window:
            raise ValueError(f"window {self.window} does not divide the stage-0 grid {self.image_size // 4}")
        if self.d_model % self.heads or self.d_model % 2:
            raise ValueError(f"d_model {self.d_model} must be even and a multiple of heads {self.heads}")


def corpus() -> list[str]:
    """BPE training lines: every task prompt and every word a scene can hold, at a line start and after a space."""
    words = list(WORDS) + list(SHAPES) + list(COLOURS) + ["a", "an", "and", "A", "An"]
    lines = [task.prompt.replace("{input}", "") for task in TASKS.values()]
    lines += words + ["the " + " ".join(words)] * 3 + [" ".join("0123456789"), "0123456789 . , "]
    return lines


def build_tokenizer(spec: ModelSpec):
    """BPE on `corpus()` plus every Florence-2 token and <image>; refuses a vocabulary that splits a word."""
    tokenizer = _bpe_tokenizer(corpus(), spec.bpe_vocab)
    words = list(WORDS) + list(SHAPES) + list(COLOURS)
    split = [form for w in words for form in (w, " " + w) if len(tokenizer(form, add_special_tokens=False).input_ids) != 1]
    if split:
        # scenes.repeats_ngram counts a word as one token; a split word could hide a repeated 3-gram.
        raise ValueError(f"bpe_vocab {spec.bpe_vocab} splits {split[:5]}: raise it")
    return tokenizer


def build_config(spec: ModelSpec, tokenizer):
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    spec.check()
    ids = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
               forced_bos_token_id=0, forced_eos_token_id=2)
    # No dropout: the data never repeats, so there is nothing to regularise against.
    text = BartConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, activation_function="gelu",
                      scale_embedding=False, dropout=0.0, attention_dropout=0.0, d_model=spec.d_model,
                      encoder_layers=spec.encoder_layers, decoder_layers=spec.decoder_layers,
                      encoder_attention_heads=spec.heads, decoder_attention_heads=spec.heads,
                      encoder_ffn_dim=spec.ffn, decoder_ffn_dim=spec.ffn, **ids)
    vision = Florence2VisionConfig(embed_dim=list(spec.vision_dims), num_heads=list(spec.vision_heads),
                                   num_groups=list(spec.vision_heads), depths=list(spec.vision_depths),
                                   window_size=spec.window, projection_dim=spec.d_model, drop_path_rate=0.0)
    return Florence2Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                           image_token_id=tokenizer.image_token_id)


def image_token_count(model, spec: ModelSpec) -> int:
    """The number of image features the tower really yields at the declared size."""
    import torch

    with torch.no_grad():
        pixels = torch.zeros(1, 3, spec.image_size, spec.image_size)
        return int(model.model.get_image_features(pixels).pooler_output.shape[1])


def build_processor(spec: ModelSpec, tokenizer, image_tokens: int):
    from transformers import CLIPImageProcessorPil, Florence2Processor

    size = {"height": spec.image_size, "width": spec.image_size}
    settings = dict(PREPROCESSOR, size=size)
    image_processor = CLIPImageProcessorPil(**settings, crop_size=size)
    image_processor.image_seq_length = image_tokens
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                              post_processor_config=DEFAULT_POST_PROCESSOR_CONFIG)


def new_model(spec: ModelSpec, seed: int):
    """(model, processor) with random weights, transformers' own initialisation."""
    import torch
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    tokenizer = build_tokenizer(spec)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(build_config(spec, tokenizer))
    model.generation_config = GenerationConfig(**dict(GENERATION_DEFAULTS, max_length=MAX_LENGTH))
    processor = build_processor(spec, tokenizer, image_token_count(model, spec))
    return model, processor


def save_folder(model, processor, out_dir: str | Path) -> Path:
    """A complete checkpoint folder: config.json, generation_config.json, model.safetensors, tokenizer,
    processor_config.json."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def spec_from_dict(values: dict) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    return ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})
