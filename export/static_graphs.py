"""The static-shape variant of the four graphs (`--static`): the form an NPU compiles.

Every shape is fixed at export (runtime.contract.StaticLayout, written to the manifest as "static"):

    vision_encoder  pixel_values [1,3,H,W] -> image_features [1,I,d]     I = the image-token count
    embed_tokens    input_ids [1,T] -> inputs_embeds [1,T,d]           T = prompt_bucket (right-padded)
    encoder         inputs_embeds [1,S,d], attention_mask [1,S] -> encoder_hidden_states [1,S,d],
                    cross.{i}.key / cross.{i}.value [1,H,S,hd]          S = I + prompt_bucket
    decoder         input_ids [R,1], position [1], encoder_attention_mask [1,S],
                    past.{i}.key/value [R,H,M,hd], cross.{i}.key/value [1,H,S,hd]
                    -> logits [R,1,V], present.{i}.key/value [R,H,1,hd]
                                                                        R = beams, M = max_decode

The decoder's self-attention K/V live in fixed buffers of M slots owned by the runtime
(runtime/static_step.py). `position` is how many slots hold earlier tokens: the graph masks the
others itself (from `position`, so no mask input to keep in sync) and returns only this step's
K/V row, which the runtime writes into slot `position` in place. Returning whole updated buffers
would copy M slots per layer per step out of the graph for one new row. R is fixed too: greedy
search runs in row 0 of R, and more beams than R is refused by the runtime.

The math is export/graphs.py's `DecoderStep` (embedding, cross-attention, post-LN layers, head);
only the self-attention over the buffer differs. The parity gate feeds buffers whose unused slots
hold random values, so a mask that leaks fails it, and compares against transformers' decoder
given the same prefix (the dynamic reference, sliced).
"""

from __future__ import annotations

import torch

from .graphs import DecoderStep, _heads

DEFAULT_PROMPT_BUCKET = 64
DEFAULT_MAX_DECODE = 256


class StaticDecoderStep(DecoderStep):
    """One decoder step over fixed-size self-attention buffers: see the module docstring."""

    def forward(self, input_ids, position, encoder_attention_mask, *cache):
        layers = len(self.decoder.layers)
        past, cross = cache[: 2 * layers], cache[2 * layers:]
        slots = torch.arange(past[0].shape[2], device=input_ids.device)
        # Additive mask over the buffer, [1, 1, 1, M]: slots before `position` hold earlier tokens.
        empty = torch.finfo(torch.float32).min
        bias = torch.where(slots < position, 0.0, empty).to(torch.float32)[None, None, None, :]
        return self._step(input_ids, position, encoder_attention_mask, cross,
                          lambda i, attn, hidden: self._buffer_attention(attn, hidden, past[2 * i], past[2 * i + 1], bias))

    @staticmethod
    def _buffer_attention(attn, hidden, key_buffer, value_buffer, bias):
        """Attention of the new token over the buffer's filled slots and itself. Two matmuls instead
        of concatenating the new row to the buffer: no per-step copy of M slots."""
        heads = attn.num_heads
        query = _heads(attn.q_proj(hidden), heads)
        key, value = _heads(attn.k_proj(hidden), heads), _heads(attn.v_proj(hidden), heads)
        scores = torch.cat([torch.matmul(query, key_buffer.transpose(2, 3)) * attn.scaling + bias,
                            torch.matmul(query, key.transpose(2, 3)) * attn.scaling], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        slots = key_buffer.shape[2]
        out = torch.matmul(weights[..., :slots], value_buffer) + torch.matmul(weights[..., slots:], value)
        return attn.out_proj(out.transpose(1, 2).reshape(hidden.shape)), key, value
