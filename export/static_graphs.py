"""The static-shape variant of the four graphs (`--static`): the form an NPU compiles.

Every shape is fixed at export (`StaticLayout`, written to the manifest as "static"):

    vision_encoder  pixel_values [1,3,768,768] -> image_features [1,577,d]
    embed_tokens    input_ids [1,T] -> inputs_embeds [1,T,d]           T = prompt_bucket (right-padded)
    encoder         inputs_embeds [1,S,d], attention_mask [1,S] -> encoder_hidden_states [1,S,d],
                    cross.{i}.key / cross.{i}.value [1,H,S,hd]          S = 577 + prompt_bucket
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

import dataclasses
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .errors import ExportError
from .graphs import DecoderStep, GraphSpec, ModelDims, _heads, graph_specs, kv_names
from .parity import _mask, reference_outputs

DEFAULT_PROMPT_BUCKET = 64
DEFAULT_MAX_DECODE = 256


@dataclass(frozen=True)
class StaticLayout:
    batch: int  # images per run (1: a batch runs image by image)
    beams: int  # decoder rows: the most beams the artifact can search with
    prompt_bucket: int  # prompt tokens, padded; encoder sequence = image tokens + prompt_bucket
    max_decode: int  # KV buffer slots = the most tokens one generation can produce

    @classmethod
    def checked(cls, beams: int, prompt_bucket: int, max_decode: int, dims: ModelDims, max_positions: int):
        """A layout, or ExportError naming the limit it breaks (learned positions end at max_positions)."""
        if beams < 1:
            raise ExportError(f"static beams must be >= 1, got {beams}")
        if not 1 <= prompt_bucket <= max_positions - dims.image_tokens:
            raise ExportError(f"--prompt-bucket must be 1..{max_positions - dims.image_tokens} for this model "
                              f"({dims.image_tokens} image tokens + prompt <= {max_positions} positions), got {prompt_bucket}")
        if not 1 <= max_decode <= max_positions:
            raise ExportError(f"--max-decode must be 1..{max_positions} for this model, got {max_decode}")
        return cls(batch=1, beams=beams, prompt_bucket=prompt_bucket, max_decode=max_decode)

    def encoder_sequence(self, dims: ModelDims) -> int:
        return dims.image_tokens + self.prompt_bucket

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def static_graph_specs(dims: ModelDims, layout: StaticLayout) -> list[GraphSpec]:
    """The dynamic specs with every axis fixed; the decoder gains `position` and its buffer form."""
    specs = []
    for spec in graph_specs(dims):
        fixed = dict(inputs={name: {} for name in spec.inputs}, outputs={name: {} for name in spec.outputs},
                     cases=partial(static_cases, spec.name, layout=layout))
        if spec.name == "decoder":
            inputs = dict(fixed["inputs"])
            fixed["inputs"] = {"input_ids": {}, "position": {}, **{k: v for k, v in inputs.items() if k != "input_ids"}}
            fixed.update(wrapper=StaticDecoderStep, reference=_decoder_reference)
        specs.append(dataclasses.replace(spec, **fixed))
    return specs


def static_cases(name: str, dims: ModelDims, seed: int = 0, *, layout: StaticLayout) -> list[dict[str, np.ndarray]]:
    """Parity inputs at the layout's shapes: a short and a full prompt; decoder steps at the first
    slot, a middle one and the last, with random values in the slots the step must not see."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    bucket, total = layout.prompt_bucket, layout.encoder_sequence(dims)
    lengths = sorted({dims.image_tokens + min(3, bucket), total})
    if name == "vision_encoder":
        return [{"pixel_values": normal(1, 3, *dims.image_size)}]
    if name == "embed_tokens":
        return [{"input_ids": rng.integers(0, dims.vocab_size, (1, bucket), dtype=np.int64)}]
    if name == "encoder":
        return [{"inputs_embeds": normal(1, total, dims.d_model), "attention_mask": _mask(1, [n], total)} for n in lengths]
    if name == "decoder":
        cases = []
        for position in sorted({0, min(5, layout.max_decode - 1), layout.max_decode - 1}):
            rows, heads, hd = layout.beams, dims.decoder_heads, dims.head_dim
            case = {"input_ids": rng.integers(0, dims.vocab_size, (rows, 1), dtype=np.int64),
                    "position": np.array([position], dtype=np.int64),
                    "encoder_attention_mask": _mask(1, [lengths[0]], total)}
            case.update({n: normal(rows, heads, layout.max_decode, hd) for n in kv_names("past", dims.decoder_layers)})
            case.update({n: normal(1, heads, total, hd) for n in kv_names("cross", dims.decoder_layers)})
            cases.append(case)
        return cases
    raise ValueError(f"no static parity inputs for graph {name!r}")


def _decoder_reference(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' decoder given the buffers' first `position` slots as its cache: the logits, and
    the K/V row it appends (its present cache at index `position`)."""
    position = int(feeds["position"][0])
    dynamic = {name: (value[:, :, :position] if name.startswith("past.") else value)
               for name, value in feeds.items() if name != "position"}
    want = reference_outputs("decoder", model, dynamic)
    return {name: (value if name == "logits" else value[:, :, position:position + 1]) for name, value in want.items()}
