"""The graph contract: every fact about the four graphs, typed, torch-free, in one place.

Export reads the facts from the checkpoint and writes them into the manifest; everything else (the
writers, the parity gate, the decoder steps, the fidelity report, the benchmark, a native port)
derives the graphs' I/O from them here instead of spelling `past.{i}.key` or 768x768 itself.

    Dims         widths, layer and head counts, vocabulary, image size and image-token count
    TokenIds     bos, eos, pad, unk, image, decoder_start, first_loc
    StaticLayout the fixed shapes of a static artifact (batch, beams, prompt bucket, KV slots)
    Contract     Dims + TokenIds (+ StaticLayout): `graph(name)` -> GraphIO, names of the K/V tensors,
                 and the limits a request must respect

Shapes are tuples of ints (fixed) and strings (named dynamic axes). The dynamic graphs:

    vision_encoder  pixel_values [batch,3,H,W] -> image_features [batch,I,d]          (I image tokens)
    embed_tokens    input_ids [batch,sequence] -> inputs_embeds [batch,sequence,d]
    encoder         inputs_embeds [batch,S,d], attention_mask [batch,S] -> encoder_hidden_states
                    [batch,S,d], cross.{i}.key/value [batch,Hd,S,hd]                    (S = I + prompt)
    decoder         input_ids [rows,1], encoder_attention_mask [batch,S], past.{i}.key/value
                    [rows,Hd,past_sequence,hd], cross.{i}.key/value -> logits [rows,1,V],
                    present.{i}.key/value [rows,Hd,present_sequence,hd]            (rows = batch*beams)

A static layout fixes batch=1, sequence=prompt_bucket, rows=beams, past_sequence=max_decode and
present_sequence=1, and the decoder takes a `position` [1] input after `input_ids`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

from .errors import Florence2Error

GRAPH_NAMES = ("vision_encoder", "embed_tokens", "encoder", "decoder")

PIXEL_VALUES, IMAGE_FEATURES = "pixel_values", "image_features"
INPUT_IDS, INPUTS_EMBEDS = "input_ids", "inputs_embeds"
ATTENTION_MASK, ENCODER_HIDDEN_STATES = "attention_mask", "encoder_hidden_states"
ENCODER_ATTENTION_MASK, POSITION, LOGITS = "encoder_attention_mask", "position", "logits"
PAST, PRESENT, CROSS = "past", "present", "cross"

FLOAT32, INT64 = "float32", "int64"


class LimitError(Florence2Error, ValueError):
    """A request beyond what the model's positions or a static artifact's fixed shapes allow."""


@dataclass(frozen=True)
class Dims:
    d_model: int
    vocab_size: int  # embedding rows = logits width
    tokenizer_size: int  # real tokens; rows past it pad the embedding and are never generated
    encoder_layers: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    image_tokens: int  # vision_encoder output tokens for one image
    image_size: tuple[int, int]  # (height, width) the vision tower takes
    max_positions: int  # learned positions of the encoder and of the decoder


@dataclass(frozen=True)
class TokenIds:
    bos: int
    eos: int
    pad: int
    unk: int
    image: int  # <image>, the placeholder the native processor repeats image_tokens times
    decoder_start: int
    first_loc: int  # <loc_0>; <loc_k> is first_loc + k


@dataclass(frozen=True)
class StaticLayout:
    batch: int  # images per run (1: a batch runs image by image)
    beams: int  # decoder rows: the most beams the artifact can search with
    prompt_bucket: int  # prompt tokens, right-padded; encoder sequence = image_tokens + prompt_bucket
    max_decode: int  # KV buffer slots = the most tokens one generation can produce

    def problems(self, dims: Dims) -> list[str]:
        """Why this layout cannot serve `dims` (empty when it can): learned positions end at max_positions."""
        found = []
        if self.batch != 1:
            found.append(f"static batch must be 1, got {self.batch}")
        if self.beams < 1:
            found.append(f"static beams must be >= 1, got {self.beams}")
        room = dims.max_positions - dims.image_tokens
        if not 1 <= self.prompt_bucket <= room:
            found.append(f"prompt bucket must be 1..{room} for this model ({dims.image_tokens} image tokens + "
                         f"prompt <= {dims.max_positions} positions), got {self.prompt_bucket}")
        if not 1 <= self.max_decode <= dims.max_positions:
            found.append(f"max decode must be 1..{dims.max_positions} for this model, got {self.max_decode}")
        return found


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # int: fixed size; str: a named dynamic axis

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}

    def resolve(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The concrete shape, named axes taken from `sizes`."""
        return tuple(sizes[size] if isinstance(size, str) else size for size in self.shape)


@dataclass(frozen=True)
class GraphIO:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> Tensor:
        return next(t for t in (*self.inputs, *self.outputs) if t.name == name)


def kv_names(prefix: str, layers: int) -> list[str]:
    """`prefix.{i}.key`, `prefix.{i}.value` for each layer, interleaved in layer order."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class Contract:
    dims: Dims
    tokens: TokenIds
    static: StaticLayout | None = None

    @cached_property
    def past_names(self) -> list[str]:
        return kv_names(PAST, self.dims.decoder_layers)

    @cached_property
    def present_names(self) -> list[str]:
        return kv_names(PRESENT, self.dims.decoder_layers)

    @cached_property
    def cross_names(self) -> list[str]:
        return kv_names(CROSS, self.dims.decoder_layers)

    @cached_property
    def graphs(self) -> dict[str, GraphIO]:
        return {io.name: io for io in _graphs(self)}

    def graph(self, name: str) -> GraphIO:
        return self.graphs[name]

    def encoder_sequence(self, prompt_tokens: int) -> int:
        return self.dims.image_tokens + prompt_tokens

    def prompt_width(self, longest: int) -> int:
        """The prompt axis the embedding and encoder graphs get: the longest prompt, or the static bucket."""
        return self.static.prompt_bucket if self.static else longest

    def with_static(self, layout: StaticLayout | None) -> Contract:
        return dataclasses.replace(self, static=layout)

    def dataflow(self) -> dict[str, str]:
        """Where each graph input's value comes from, and the rules around the graphs, in words: what
        a port of the loop must do (a mobile manifest carries it; examples/mobile_port.py checks every
        statement it relies on against the manifest's)."""
        s, past, present, cross = self.static, self.past_names[0], self.present_names[0], self.cross_names[0]
        kv = lambda name: name.replace(".0.key", ".{i}.key|value")  # noqa: E731
        flow = {
            "vision_encoder.pixel_values": (
                "the image in RGB (transparency composited onto white), resized to dims.image_size (height, "
                "width) with preprocessing.resample (PIL's numbering: 3 = bicubic), then per uint8 value v "
                "float32(float64(v) * rescale_factor), then (x - float32(image_mean[c])) / float32(image_std[c]) "
                "in float32, channels first"),
            "embed_tokens.input_ids": (
                "the prompt ids, one row per image: tasks.<task>.prompt_ids, or [tokens.bos] + BPE(prompt) + "
                "[tokens.eos] for a task with text; right-padded with tokens.pad to "
                + ("static.prompt_bucket" if s else "the longest prompt")),
            "encoder.inputs_embeds": "concat(vision_encoder.image_features, embed_tokens.inputs_embeds) on axis 1",
            "encoder.attention_mask": "1 for each image token and each prompt token, 0 for padding (int64)",
            "decoder.encoder_attention_mask": "encoder.attention_mask",
            f"decoder.{kv(cross)}": f"encoder.{kv(cross)}, the same at every step, one row per image (not per beam)",
            "decoder.logits": "next-token logits per row; ids >= dims.tokenizer_size are never chosen",
            "generation": (
                "transformers' generate() of an encoder-decoder model whose decoder prompt is tokens.decoder_start "
                "alone: greedy or beam search with the generation options; eos = generation.eos_token_id or "
                "tokens.eos, pad = generation.pad_token_id or tokens.pad"),
            "text": "the token bytes of the ids concatenated (special tokens kept), decoded as UTF-8 (bad bytes: U+FFFD)",
            "answer": ("transformers' Florence2Processor.post_process_generation(text, task, (width, height) of "
                       "the image as given), with post_processing and tasks.<task>.parse_type"),
        }
        if s is None:
            flow.update({
                "decoder.input_ids": ("the last token of each row, tokens.decoder_start at the first step; row "
                                      "b * beams + k is beam k of image b"),
                f"decoder.{kv(past)}": (f"decoder.{kv(present)} of the previous step, rows reordered as the beams "
                                        "are (row r takes old row beam_idx[r]); at the first step [rows, heads, 0, "
                                        "head_dim] (empty)"),
            })
        else:
            flow.update({
                "decoder.input_ids": ("the last token of each beam, tokens.decoder_start at the first step; beam k "
                                      "in row k; rows past the beams in use take token 0 and are ignored"),
                "decoder.position": "the number of steps run before this one (0 at the first step)",
                f"decoder.{kv(past)}": (f"fixed buffers [static.beams, heads, static.max_decode, head_dim], zeros at "
                                        f"first; after each step decoder.{kv(present)} (one slot) is written at slot "
                                        "position; beam search reorders slots 0..position of the rows"),
            })
        return dict(sorted(flow.items()))

    def check_request(self, prompt_lengths: list[int], max_new_tokens: int, num_beams: int) -> None:
        """LimitError naming the limit, before any graph runs: the encoder's and the decoder's learned
        positions (a backend would raise deep inside, or silently run past the table), and a static
        artifact's bucket, KV slots and rows."""
        dims, longest = self.dims, max(prompt_lengths)
        room = dims.max_positions - dims.image_tokens
        if longest > room:
            raise LimitError(f"the prompt is {longest} tokens; this model takes at most {room} "
                             f"({dims.max_positions} positions - {dims.image_tokens} image tokens): shorten the text")
        if max_new_tokens > dims.max_positions:
            raise LimitError(f"max_new_tokens={max_new_tokens} is more than this model's {dims.max_positions} "
                             "decoder positions")
        if self.static is None:
            return
        static = self.static
        if longest > static.prompt_bucket:
            raise LimitError(f"the prompt is {longest} tokens, longer than this static artifact's prompt bucket of "
                             f"{static.prompt_bucket}: shorten the text, or export with a larger --prompt-bucket")
        if max_new_tokens > static.max_decode:
            raise LimitError(f"max_new_tokens={max_new_tokens} is more than this static artifact's KV buffers "
                             f"hold ({static.max_decode}): lower it, or export with a larger --max-decode")
        if num_beams > static.beams:
            raise LimitError(f"num_beams={num_beams} is more than this static artifact's {static.beams} "
                             "decoder rows: lower it, or export with a larger --static-beams")


def _graphs(c: Contract) -> list[GraphIO]:
    d, s = c.dims, c.static
    heads, hd = d.decoder_heads, d.head_dim
    batch = 1 if s else "batch"
    sequence = s.prompt_bucket if s else "sequence"
    encoder_seq = d.image_tokens + s.prompt_bucket if s else "encoder_sequence"
    rows = s.beams if s else "rows"
    past, present = (s.max_decode, 1) if s else ("past_sequence", "present_sequence")
    height, width = d.image_size
    cross = [Tensor(n, FLOAT32, (batch, heads, encoder_seq, hd)) for n in c.cross_names]
    position = [Tensor(POSITION, INT64, (1,))] if s else []
    return [
        GraphIO("vision_encoder", (Tensor(PIXEL_VALUES, FLOAT32, (batch, 3, height, width)),),
                (Tensor(IMAGE_FEATURES, FLOAT32, (batch, d.image_tokens, d.d_model)),)),
        GraphIO("embed_tokens", (Tensor(INPUT_IDS, INT64, (batch, sequence)),),
                (Tensor(INPUTS_EMBEDS, FLOAT32, (batch, sequence, d.d_model)),)),
        GraphIO("encoder",
                (Tensor(INPUTS_EMBEDS, FLOAT32, (batch, encoder_seq, d.d_model)),
                 Tensor(ATTENTION_MASK, INT64, (batch, encoder_seq))),
                (Tensor(ENCODER_HIDDEN_STATES, FLOAT32, (batch, encoder_seq, d.d_model)), *cross)),
        GraphIO("decoder",
                (Tensor(INPUT_IDS, INT64, (rows, 1)), *position,
                 Tensor(ENCODER_ATTENTION_MASK, INT64, (batch, encoder_seq)),
                 *(Tensor(n, FLOAT32, (rows, heads, past, hd)) for n in c.past_names), *cross),
                (Tensor(LOGITS, FLOAT32, (rows, 1, d.vocab_size)),
                 *(Tensor(n, FLOAT32, (rows, heads, present, hd)) for n in c.present_names))),
    ]
