"""Generation over a static-shape artifact (manifest "static", `python -m export --static`).

The static graphs take one image, a prompt padded to `prompt_bucket` tokens and `beams` decoder
rows; the decoder reads self-attention K/V from fixed buffers of `max_decode` slots at a `position`
and returns the new K/V row (export/static_graphs.py). Here:

- `StaticDecoderStep` is the `runtime.search.StepModel` over that graph: it owns the buffers
  [beams, H, max_decode, hd] per layer, writes each step's row into slot `position` in place, and
  reorders the filled slots for beam search. Greedy search (or fewer beams) uses the first rows.
- `generate_static` runs a batch image by image and pads the rows to one width, as transformers
  pads a batch, so the ids equal `generate()` on the whole batch.
- Limits are checked before any graph runs: a prompt longer than the bucket, more new tokens than
  the buffers hold, or more beams than rows is a one-line `StaticLimitError`.
"""

from __future__ import annotations

import numpy as np

from .errors import Florence2Error
from .generation import GenerationOptions
from .search import decode


class StaticLimitError(Florence2Error, ValueError):
    """A request beyond a static artifact's fixed shapes (prompt bucket, KV buffer, beam rows)."""


class StaticDecoderStep:
    def __init__(self, session, cross: dict[str, np.ndarray], encoder_mask: np.ndarray, layers: int,
                 heads: int, head_dim: int, rows: int, max_decode: int):
        self._session = session
        past = [f"past.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        self._rows_out = {name.replace("past.", "present.", 1): name for name in past}
        self._outputs = ["logits", *self._rows_out]
        # Allocated once per generation and only written in place, so one feeds dict serves every
        # step; the backend reads them where they are (no per-step copy).
        self._buffers = {name: np.zeros((rows, heads, max_decode, head_dim), dtype=np.float32) for name in past}
        self._ids = np.zeros((rows, 1), dtype=np.int64)  # rows past the beams in use run on token 0, unread
        self._position = np.zeros(1, dtype=np.int64)
        self._feeds = {"input_ids": self._ids, "position": self._position, "encoder_attention_mask": encoder_mask,
                       **cross, **self._buffers}
        self._max_decode = max_decode
        self.position = 0  # slots filled = tokens consumed so far

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        used = input_ids.shape[0]
        if self.position >= self._max_decode:  # generate_static checks first; this guards other callers
            raise StaticLimitError(f"the static decoder's KV buffers hold {self._max_decode} tokens; step {self.position + 1} does not fit")
        self._ids[:used] = input_ids
        self._position[0] = self.position
        out = self._session.run(self._feeds, self._outputs)
        for present, past in self._rows_out.items():
            self._buffers[past][:, :, self.position] = out[present][:, :, 0]
        self.position += 1
        return out["logits"][:used, -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        used, filled = len(beam_idx), self.position
        if np.array_equal(beam_idx, np.arange(used)):  # every beam kept its own row
            return
        for buffer in self._buffers.values():
            buffer[:used, :, :filled] = buffer[beam_idx, :, :filled]  # the right side is a copy first


def static_defaults(defaults: GenerationOptions, static: dict) -> GenerationOptions:
    """The checkpoint's defaults within the artifact's buffers: Florence-2's default of 1024 new
    tokens becomes max_decode (an explicit larger max_new_tokens is still refused)."""
    return defaults.replace(max_new_tokens=min(defaults.max_new_tokens, static["max_decode"]))


def check_static_request(static: dict, prompt_lengths: list[int], options: GenerationOptions) -> None:
    longest = max(prompt_lengths)
    if longest > static["prompt_bucket"]:
        raise StaticLimitError(f"the prompt is {longest} tokens, longer than this static artifact's prompt bucket of "
                               f"{static['prompt_bucket']}: shorten the text, or export with a larger --prompt-bucket")
    if options.max_new_tokens > static["max_decode"]:
        raise StaticLimitError(f"max_new_tokens={options.max_new_tokens} is more than this static artifact's KV buffers "
                               f"hold ({static['max_decode']}): lower it, or export with a larger --max-decode")
    if options.num_beams > static["beams"]:
        raise StaticLimitError(f"num_beams={options.num_beams} is more than this static artifact's {static['beams']} "
                               "decoder rows: lower it, or export with a larger --static-beams")


def generate_static(model, request, options: GenerationOptions) -> np.ndarray:
    """`model._generate` for a static artifact: one image at a time, rows padded to one width."""
    from .model import Request

    static, dims = model.manifest.static, model.manifest.dims
    check_static_request(static, [len(model.tokenizer.encode(p)) for p in request.prompts], options)
    rows = []
    for image, task, prompt in zip(request.images, request.tasks, request.prompts):
        cross, mask = model.encode(Request([image], [task], [prompt]))
        step = StaticDecoderStep(model.sessions["decoder"], cross, mask, dims["decoder_layers"], dims["decoder_heads"],
                                 dims["head_dim"], static["beams"], static["max_decode"])
        rows.append(decode(step, 1, options)[0])
    # What generate() pads a finished row with: pad_token_id in greedy search, `pad or eos` in beam
    # search (see runtime/search.py BeamSearchDecoder.fill).
    fill = options.pad_token_id if options.num_beams == 1 else (options.pad_token_id or options.eos_token_id)
    ids = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids
