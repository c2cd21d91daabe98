"""What transformers itself computes for each graph's inputs: the reference of the parity gate.

Not our wrappers: `get_image_features`, the prompt embedding, the BART encoder plus the cross K/V
its decoder caches, and the BART decoder over an `EncoderDecoderCache`. A wrapper that drifts from
transformers therefore fails the gate too. Outputs are keyed by the contract's names.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from runtime.contract import (ATTENTION_MASK, ENCODER_ATTENTION_MASK, ENCODER_HIDDEN_STATES, IMAGE_FEATURES, INPUT_IDS,
                              INPUTS_EMBEDS, LOGITS, PIXEL_VALUES, POSITION, Contract)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def cache_argument(module) -> str:
    """The keyword a transformers module takes its KV cache by: `cache` from transformers 5.24 on
    (`past_key_values` is deprecated there and goes in 5.40), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@torch.no_grad()
def reference_outputs(name: str, model, feeds: dict[str, np.ndarray], contract: Contract) -> dict[str, np.ndarray]:
    """transformers' outputs for graph `name` on `feeds` (a static decoder's too)."""
    if name == "vision_encoder":
        return {IMAGE_FEATURES: model.get_image_features(_t(feeds[PIXEL_VALUES])).pooler_output.numpy()}
    if name == "embed_tokens":
        return {INPUTS_EMBEDS: model.get_input_embeddings()(_t(feeds[INPUT_IDS])).numpy()}
    if name == "encoder":
        return _encoder(model, feeds, contract)
    if name == "decoder":
        return _static_decoder(model, feeds, contract) if POSITION in feeds else _decoder(model, feeds, contract)
    raise ValueError(f"no reference for graph {name!r}")


def _encoder(model, feeds, contract: Contract):
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    language_model = model.model.language_model
    mask = _t(feeds[ATTENTION_MASK])
    hidden = language_model.encoder(inputs_embeds=_t(feeds[INPUTS_EMBEDS]), attention_mask=mask).last_hidden_state
    # One decoder step fills transformers' cross-attention cache: those are the K/V to match.
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    start = torch.full((hidden.shape[0], 1), contract.tokens.decoder_start)
    decoder = language_model.decoder
    decoder(input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=mask, use_cache=True,
            **{cache_argument(decoder): cache})
    outputs = {ENCODER_HIDDEN_STATES: hidden.numpy()}
    for names, layer in zip(zip(contract.cross_names[::2], contract.cross_names[1::2]), cache.cross_attention_cache.layers):
        outputs[names[0]], outputs[names[1]] = layer.keys.numpy(), layer.values.numpy()
    return outputs


def _decoder(model, feeds, contract: Contract):
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    decoder = model.model.language_model.decoder
    input_ids, mask = _t(feeds[INPUT_IDS]), _t(feeds[ENCODER_ATTENTION_MASK])
    beams = input_ids.shape[0] // mask.shape[0]
    self_cache, cross_cache = DynamicCache(), DynamicCache()
    past, cross = contract.past_names, contract.cross_names
    for i in range(contract.dims.decoder_layers):
        if feeds[past[2 * i]].shape[2]:
            self_cache.update(_t(feeds[past[2 * i]]), _t(feeds[past[2 * i + 1]]), i)
        # transformers' own layout: cross K/V repeated per beam.
        cross_cache.update(_t(feeds[cross[2 * i]]).repeat_interleave(beams, 0),
                           _t(feeds[cross[2 * i + 1]]).repeat_interleave(beams, 0), i)
    cache = EncoderDecoderCache(self_cache, cross_cache)
    rows, sequence = input_ids.shape[0], mask.shape[1]
    unused_hidden = torch.zeros(rows, sequence, decoder.config.d_model)  # K/V come from the cache
    out = decoder(input_ids=input_ids, encoder_hidden_states=unused_hidden, use_cache=True,
                  encoder_attention_mask=mask.repeat_interleave(beams, 0), **{cache_argument(decoder): cache})
    outputs = {LOGITS: model.lm_head(out.last_hidden_state).numpy()}
    present = contract.present_names
    for i, layer in enumerate(cache.self_attention_cache.layers[:contract.dims.decoder_layers]):
        outputs[present[2 * i]], outputs[present[2 * i + 1]] = layer.keys.numpy(), layer.values.numpy()
    return outputs


def _static_decoder(model, feeds, contract: Contract):
    """transformers' decoder given the buffers' first `position` slots as its cache: the logits, and
    the K/V row it appends (its present cache at index `position`)."""
    position = int(feeds[POSITION][0])
    dynamic = {name: (value[:, :, :position] if name in contract.past_names else value)
               for name, value in feeds.items() if name != POSITION}
    want = _decoder(model, dynamic, contract.with_static(None))
    return {name: (value if name == LOGITS else value[:, :, position:position + 1]) for name, value in want.items()}
