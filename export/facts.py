"""The graph contract of a checkpoint, read from the checkpoint itself (never assumed).

Image size: the image processor's `size`. Image-token count: what the vision tower really returns for
that size (one forward pass on a blank image), which must agree with the processor's
`image_seq_length` (the number of `<image>` placeholders transformers inserts): a disagreement is a
one-line export error, since transformers itself would fail on such a checkpoint. Everything else
comes from the configs and the tokenizer.
"""

from __future__ import annotations

from runtime.contract import Contract, Dims, TokenIds

from .errors import ExportError


def image_size_of(image_processor) -> tuple[int, int]:
    size = getattr(image_processor, "size", None) or {}
    size = size if isinstance(size, dict) else {k: getattr(size, k, None) for k in ("height", "width")}
    height, width = size.get("height"), size.get("width")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ExportError(f"image processor size {size} is not supported: expected {{'height': H, 'width': W}} "
                          "as Florence-2 uses")
    return height, width


def image_token_count(model, image_size: tuple[int, int]) -> int:
    """The vision tower's token count for one image of `image_size` (the truth the graphs are built on)."""
    import torch

    with torch.no_grad():
        features = model.get_image_features(torch.zeros(1, 3, *image_size)).pooler_output
    return int(features.shape[1])


def read_contract(checkpoint) -> Contract:
    model, processor = checkpoint.model, checkpoint.processor
    text, tokenizer = model.config.text_config, processor.tokenizer
    image_size = image_size_of(processor.image_processor)
    tokens = image_token_count(model, image_size)
    declared = getattr(processor, "num_image_tokens", None) or getattr(processor.image_processor, "image_seq_length", None)
    if declared is not None and declared != tokens:
        raise ExportError(f"the processor's image_seq_length is {declared}, but the vision tower gives {tokens} tokens "
                          f"for {image_size[0]}x{image_size[1]} images: set image_seq_length to {tokens} in "
                          "preprocessor_config.json (or the size the model was trained at)")
    dims = Dims(d_model=text.d_model, vocab_size=text.vocab_size, tokenizer_size=len(tokenizer),
                encoder_layers=text.encoder_layers, decoder_layers=text.decoder_layers,
                decoder_heads=text.decoder_attention_heads, head_dim=text.d_model // text.decoder_attention_heads,
                image_tokens=tokens, image_size=image_size, max_positions=text.max_position_embeddings)
    generation = checkpoint.generation_config
    start = generation.decoder_start_token_id
    ids = TokenIds(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                   unk=tokenizer.unk_token_id, image=model.config.image_token_id,
                   decoder_start=start if start is not None else text.decoder_start_token_id,
                   first_loc=tokenizer.convert_tokens_to_ids("<loc_0>"))
    return Contract(dims, ids)
