"""Build Florence-2 checkpoints offline, in the transformers-native layout, from a preset and a seed.

These are the random presets: `random-tiny` is the real architecture at small width with the real
image size (768 px, 577 image tokens), so every graph, every token id and every file is exercised in
seconds, with no network; `base` and `large` have the real shapes (random weights), for size, speed
and parity checks of real-sized graphs. The embedded default `python -m export` uses without
`--model` is not one of them: `embedded:tiny` is the checkpoint trained on synthetic scenes and
shipped in `export/synthetic/weights/` (see `TRAINED` and that folder's README), a model whose boxes
and masks are right. The tokenizer is a real byte-level BPE (trained here on a small corpus) carrying
every token real Florence-2 checkpoints add: the task tokens, `<loc_0>`..`<loc_999>`, `<poly>`, `<sep>`... and
`<image>`. Processor, preprocessing and generation config are written as real checkpoints have them.
"""

from __future__ import annotations

from pathlib import Path

from runtime.tasks import DEFAULT_POST_PROCESSOR_CONFIG

from .vocabulary import BART_SPECIALS, FLORENCE_TOKENS, IMAGE_TOKEN, build_tokenizer as _build_tokenizer  # noqa: F401

_CORPUS = """\
What is the text in the image? What is the text in the image, with regions?
What does the image describe? Describe in detail what is shown in the image.
Describe with a paragraph what is shown in the image. Locate the objects with category name in the image.
Locate the objects in the image, with their descriptions. Locate the region proposals in the image.
Locate the phrases in the caption: a green car parked in front of a yellow building.
Locate a red car in the image with mask. What is the polygon mask of region
Locate the person in the image. What is the region? What does the region describe?
What text is in the region? A cat sitting on a wooden table next to a cup of coffee.
Two dogs playing with a ball on the grass in a sunny park. A man riding a bicycle down the street.
The sign says OPEN 24 HOURS. Total amount due: 42.50 USD. Invoice number 1234, date 2024-05-01.
A woman holding an umbrella in the rain. A plate of food with rice, vegetables and chicken.
A bus stop with people waiting, trees and a blue sky with clouds. The quick brown fox jumps over the lazy dog.
"""

# The trained default (embedded:tiny): package data, written by `python -m export.synthetic.train --export`.
TRAINED = "tiny"
TRAINED_WEIGHTS = Path(__file__).parent / "synthetic" / "weights"

PRESETS: dict[str, dict] = {
    # Real architecture, small width: 577 image tokens (768x768 input, window 12) like the real model.
    "random-tiny": {
        "vision": dict(embed_dim=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4],
                       depths=[1, 1, 2, 1], projection_dim=64),
        "text": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128),
        "vocab_size": None,  # exactly the tokenizer
        "decoder_scale": 2.0, "embedding_std": 0.7,  # see _spread_logits
    },
    "base": {
        "vision": dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                       depths=[1, 1, 9, 1], projection_dim=768),
        "text": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                     decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
        "vocab_size": 51289,
        "decoder_scale": 1.0, "embedding_std": 0.5,
    },
    "large": {
        "vision": dict(embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64], num_groups=[8, 16, 32, 64],
                       depths=[1, 1, 9, 1], projection_dim=1024),
        "text": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                     decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
        "vocab_size": 51289,
        "decoder_scale": 1.0, "embedding_std": 0.5,
    },
}

GENERATION_DEFAULTS = dict(
    bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
    forced_bos_token_id=0, forced_eos_token_id=2,
    num_beams=3, no_repeat_ngram_size=3, early_stopping=True, max_length=1025,
)

PREPROCESSOR = dict(
    do_resize=True, size={"height": 768, "width": 768}, resample=3, do_center_crop=False,
    do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
)


def build_tokenizer(bpe_vocab_size: int = 600):
    """A BART tokenizer (byte-level BPE trained on a small corpus) with every Florence-2 token added."""
    return _build_tokenizer(_CORPUS.splitlines(), bpe_vocab_size)


def build_config(preset: str, tokenizer, vision: dict | None = None, text: dict | None = None):
    """The preset's config; `vision` and `text` override its vision / text settings (e.g. window_size)."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    spec = PRESETS[preset]
    text_settings = {**spec["text"], **(text or {})}
    vision_settings = {**spec["vision"], **(vision or {})}
    # Embedding rows: the preset's (real checkpoints pad to a multiple of 64), never fewer than the tokenizer.
    vocab_size = max(text_settings.pop("vocab_size", None) or spec["vocab_size"] or 0, len(tokenizer))
    text_config = BartConfig(
        vocab_size=vocab_size, max_position_embeddings=1024, activation_function="gelu",
        scale_embedding=False, dropout=0.1, attention_dropout=0.1,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, **text_settings,
    )
    vision_config = Florence2VisionConfig(drop_path_rate=0.1, **vision_settings)
    return Florence2Config(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                           image_token_id=tokenizer.image_token_id)


def build_checkpoint(out_dir: str | Path, preset: str = "random-tiny", seed: int = 0, image_size: int | None = None,
                     vision: dict | None = None, text: dict | None = None) -> Path:
    """Write a complete native-layout checkpoint (config, safetensors weights, tokenizer, processor,
    generation config) to `out_dir`. Deterministic for a given preset and seed. `image_size` (square,
    default 768) is the size the processor declares; `vision` / `text` override config settings
    (e.g. {"window_size": 4} for a small image). The processor's image_seq_length is what the vision
    tower gives at that size."""
    import torch
    from transformers import CLIPImageProcessorPil, Florence2ForConditionalGeneration, Florence2Processor, GenerationConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = build_config(preset, tokenizer, vision, text)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    _spread_logits(model, seed, PRESETS[preset]["decoder_scale"], PRESETS[preset]["embedding_std"])
    model.generation_config = GenerationConfig(**GENERATION_DEFAULTS)
    model.save_pretrained(out_dir)

    side = image_size or PREPROCESSOR["size"]["height"]
    size = {"height": side, "width": side}
    image_processor = CLIPImageProcessorPil(**{**PREPROCESSOR, "size": size}, crop_size=size)
    with torch.no_grad():
        image_processor.image_seq_length = int(model.get_image_features(torch.zeros(1, 3, side, side)).pooler_output.shape[1])
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config=DEFAULT_POST_PROCESSOR_CONFIG)
    processor.save_pretrained(out_dir)
    return out_dir


def _spread_logits(model, seed: int, decoder_scale: float, embedding_std: float) -> None:
    """Default init (std 0.02) gives a language model whose output ignores its inputs and whose
    logits are nearly uniform, where argmax hangs on 1e-7 differences. Real checkpoints are peaked and
    input-driven; re-draw the decoder so random ones are too (wider embedding,
    fan-in scaled linears), and decoded tokens depend on image and prompt by clear margins.
    Deep presets get a gentler scale: each layer multiplies float32 rounding by it."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.model.language_model.decoder.modules():
            if isinstance(module, torch.nn.Linear):
                scale = decoder_scale / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * scale)
        shared = model.get_input_embeddings().weight  # tied to lm_head
        shared.copy_(torch.randn(shared.shape, generator=generator) * embedding_std)
