"""The four graphs an artifact holds: one tiny nn.Module per exported boundary.

Each wrapper computes exactly one graph of the contract (runtime/contract.py holds the I/O names and
shapes; export/specs.py pairs each wrapper with them, its tolerance and its reference):
    vision_encoder  pixel_values [B,3,H,W] -> image_features [B,I,d]
    embed_tokens    input_ids [B,T] -> inputs_embeds [B,T,d]
    encoder         inputs_embeds [B,S,d], attention_mask [B,S] -> encoder_hidden_states [B,S,d],
                    cross.{i}.key / cross.{i}.value [B,H,S,hd] for every decoder layer i
    decoder         input_ids [N,1], encoder_attention_mask [B,S], past.{i}.key/value [N,H,P,hd],
                    cross.{i}.key/value [B,H,S,hd] -> logits [N,1,V], present.{i}.key/value [N,H,P+1,hd]
where I is the image-token count and N = B * beams, rows grouped per batch item. The decoder attends
each beam's query to its batch item's cross K/V by folding beams into the query axis, so beam search
never copies cross K/V.
"""

from __future__ import annotations

import torch
from torch import nn

from .davit import export_copy, fast_vision_rewrites


class VisionEncoder(nn.Module):
    """DaViT + position/temporal embeddings + projection + LayerNorm: pixels to image tokens."""

    def __init__(self, model):
        super().__init__()
        # A copy with export-friendly DaViT modules (export/davit.py), weights shared; the module
        # names stay those of transformers (model.vision_tower...), which quantization policies select by.
        self.model = export_copy(model.model, fast_vision_rewrites())

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values).pooler_output


class EmbedTokens(nn.Module):
    """The prompt embedding, scale included (BART's scaled word embedding)."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H*hd] -> [B, H, S, hd]"""
    batch, seq, width = x.shape
    return x.reshape(batch, seq, heads, width // heads).transpose(1, 2)


class Encoder(nn.Module):
    """The BART encoder over [image tokens ; prompt], plus every decoder layer's cross-attention K/V,
    so the decoder never recomputes them per token."""

    def __init__(self, model):
        super().__init__()
        language_model = model.model.language_model
        self.encoder = language_model.encoder
        self.cross_attn = nn.ModuleList(layer.encoder_attn for layer in language_model.decoder.layers)

    def forward(self, inputs_embeds, attention_mask):
        hidden = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        outputs = [hidden]
        for attn in self.cross_attn:
            outputs += [_heads(attn.k_proj(hidden), attn.num_heads), _heads(attn.v_proj(hidden), attn.num_heads)]
        return tuple(outputs)


class DecoderStep(nn.Module):
    """One decoder step over cached self-attention K/V and precomputed cross-attention K/V.

    Written out with the decoder's own submodules (BART post-LN layers) because transformers'
    attention would need the cross K/V repeated per beam; here beams share them.
    """

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.lm_head = model.lm_head

    def forward(self, input_ids, encoder_attention_mask, *cache):
        layers = self.decoder.layers
        past, cross = cache[: 2 * len(layers)], cache[2 * len(layers):]
        positions = torch.arange(1, device=input_ids.device) + past[0].shape[2]
        return self._step(input_ids, positions, encoder_attention_mask, cross,
                          lambda i, attn, hidden: self._self_attention(attn, hidden, past[2 * i], past[2 * i + 1]))

    def _step(self, input_ids, positions, encoder_attention_mask, cross, attend):
        """The decoder stack for one token at `positions` [1]. `attend(i, attn, hidden)` -> (out, key,
        value) is layer i's self-attention over its cache: concatenated here, a fixed-size buffer in
        the static graph (export/static_graphs.py); the keys/values it returns are the graph's outputs."""
        hidden = self.decoder.embed_tokens(input_ids) + self.decoder.embed_positions(input_ids, position_ids=positions)
        hidden = self.decoder.layernorm_embedding(hidden)
        # Additive mask over encoder positions, [B, 1, 1, S]. A select, not (1 - mask) * min: in fp16
        # (CoreML, ONNX fp16) min becomes -inf and 0 * -inf is NaN on every unmasked position.
        bias = torch.where(encoder_attention_mask[:, None, None, :] != 0, 0.0, torch.finfo(hidden.dtype).min)
        presents = []
        for i, layer in enumerate(self.decoder.layers):
            attn_out, key, value = attend(i, layer.self_attn, hidden)
            presents += [key, value]
            hidden = layer.self_attn_layer_norm(hidden + attn_out)
            cross_out = self._cross_attention(layer.encoder_attn, hidden, cross[2 * i], cross[2 * i + 1], bias)
            hidden = layer.encoder_attn_layer_norm(hidden + cross_out)
            hidden = layer.final_layer_norm(hidden + layer.fc2(layer.activation_fn(layer.fc1(hidden))))
        return (self.lm_head(hidden), *presents)

    @staticmethod
    def _self_attention(attn, hidden, past_key, past_value):
        heads = attn.num_heads
        query = _heads(attn.q_proj(hidden), heads)
        key = torch.cat([past_key, _heads(attn.k_proj(hidden), heads)], dim=2)
        value = torch.cat([past_value, _heads(attn.v_proj(hidden), heads)], dim=2)
        weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * attn.scaling, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(hidden.shape)
        return attn.out_proj(out), key, value

    @staticmethod
    def _cross_attention(attn, hidden, key, value, bias):
        rows, _, width = hidden.shape
        batch, heads, _, head_dim = key.shape
        # [N,1,d] -> [B, H, beams, hd]: a batch item's beams become its query positions.
        query = attn.q_proj(hidden).reshape(batch, -1, heads, head_dim).transpose(1, 2)
        weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * attn.scaling + bias, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(rows, 1, width)
        return attn.out_proj(out)
