"""The decoding loop: greedy and beam search strategies and the `decode` driver.

`decode(step, batch_size, options)` returns exactly what transformers' `model.generate(...)`
returns for an encoder-decoder model (transformers 5.x `_sample` with do_sample=False, and the
vectorized `_beam_search`), given a `StepModel` that runs one decoder step with its own KV cache.

Numerics follow torch on CPU: scores stay float32 (logits are upcast, as generate() does),
log_softmax is `(x - max) - log(sum(exp(x - max)))` in float32, and length penalties divide float32
scores by the float32-rounded Python float. Bit-identical log-probs are out of reach: torch's
vectorized exp/log and lane-wise sum give a log-sum an ulp or so away from numpy's, which shifts a
whole row and can only flip a choice between beams whose scores agree to ~1e-7 relative.
torch.topk leaves the order of exactly equal scores unspecified; here they go in index order.
Exact ties only arise between masked (-inf) or -1e9 placeholder candidates, which never reach the output.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .generation import GenerationOptions, TokenRules, verify_options
from .logits import ProcessorChain, build_processors

# transformers' "never pick this" offset for beam scores (a finite -1e9, not -inf).
_BIG_NEG = np.float32(-1.0e9)
_PROMPT_LEN = 1  # the decoder prompt is the decoder start token alone
_SMALL_TOPK = 256  # rows up to this wide are fully sorted by topk()


class StepModel(Protocol):
    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        """int64 [N, 1] -> float32 logits [N, V]; N = batch * num_beams, row b * num_beams + k.

        Runs one decoder step and appends it to the model's own KV cache.
        """

    def reorder(self, beam_idx: np.ndarray) -> None:
        """int64 [N]: cache row i becomes old row beam_idx[i] (transformers' Cache.reorder_cache)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log_softmax over the last axis, in the operation order of torch's CPU kernel."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))
    return shifted - log_sum


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest k per row of x [R, n], as (values, indices) [R, k], largest first, ties in index order."""
    x = np.ascontiguousarray(x)
    rows, n = x.shape
    if k >= n or n <= _SMALL_TOPK:  # a full stable sort: cheaper than the candidate search on few scores
        idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
        return x[np.arange(rows)[:, None], idx], idx
    # The k-th largest of a strided sample bounds the k-th largest of x from below and, on real
    # scores, leaves ~k * stride candidates, so a beam step need not partition all num_beams * V
    # scores (np.partition is also slow on the many equal -inf of a forced-token step).
    stride = max(1, int((n / k) ** 0.5))
    sample = x[:, ::stride]
    flat = _candidates(x, k, np.partition(sample, sample.shape[1] - k, axis=-1)[:, sample.shape[1] - k])
    if len(flat) > rows * k * 4 * stride:  # an unrepresentative sample: bound by the exact k-th value
        flat = _candidates(x, k, np.partition(x, n - k, axis=-1)[:, n - k])
    return _sorted_candidates(x, flat, k)


def _candidates(x: np.ndarray, k: int, bound: np.ndarray) -> np.ndarray:
    """Ascending flat indices holding each row's top k, given bound [R] <= each row's k-th largest."""
    rows, n = x.shape
    flat = np.flatnonzero(x > bound[:, None])
    need = k - np.bincount(flat // n, minlength=rows)
    short = np.flatnonzero(need > 0)
    if len(short) == 0:  # >= k scores above the bound: every top-k score (ties included) is among them
        return flat
    # Otherwise the k-th largest equals the bound: add the lowest-index scores equal to it.
    ties = [r * n + np.flatnonzero(x[r] == bound[r])[:need[r]] for r in short.tolist()]
    return np.sort(np.concatenate([flat, *ties]))


def _rank_in_row(row_of: np.ndarray, rows: int) -> np.ndarray:
    """For row ids sorted ascending, each element's position within its row."""
    counts = np.bincount(row_of, minlength=rows)
    return np.arange(len(row_of)) - np.repeat(np.cumsum(counts) - counts, counts)


def _sorted_candidates(x: np.ndarray, flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each row among candidate flat indices (ascending; >= k per row)."""
    rows, n = x.shape
    row_of, col = np.divmod(flat, n)
    pos = _rank_in_row(row_of, rows)
    width = int(pos.max()) + 1
    # Pad ragged rows with -inf after the real candidates: a stable sort keeps pads last among equals.
    values = np.full((rows, width), -np.inf, dtype=x.dtype)
    cols = np.full((rows, width), n, dtype=np.int64)
    values[row_of, pos] = x.reshape(-1)[flat]
    cols[row_of, pos] = col
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    row_idx = np.arange(rows)[:, None]
    return values[row_idx, order], cols[row_idx, order]


class TokenDecoder:
    """A search strategy. decode() calls reset, then next_input/update until done, then finalize."""

    done: bool

    def reset(self, batch_size: int) -> None:
        raise NotImplementedError

    def next_input(self) -> np.ndarray:
        """int64 [N, 1]: the token each cache row consumes next."""
        raise NotImplementedError

    def update(self, logits: np.ndarray) -> np.ndarray | None:
        """Consumes float32 logits [N, V]; returns beam_idx [N] the cache must be reordered by, or None."""
        raise NotImplementedError

    def finalize(self) -> np.ndarray:
        """int64 [batch, L], as generate() returns it."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """transformers `_sample` with do_sample=False: argmax of the processed logits."""

    def __init__(self, options: GenerationOptions, rules: TokenRules, processors: ProcessorChain):
        self.options, self.rules = options, rules
        self.processors = processors
        self.max_length = _PROMPT_LEN + options.max_new_tokens

    def reset(self, batch_size: int) -> None:
        self.tokens = np.full((batch_size, self.max_length), self.rules.pad_token_id, dtype=np.int64)
        self.tokens[:, 0] = self.rules.decoder_start_token_id
        self.cur_len = _PROMPT_LEN
        self.unfinished = np.ones(batch_size, dtype=bool)
        self.done = False
        self.processors.reset(batch_size)

    def next_input(self) -> np.ndarray:
        return self.tokens[:, self.cur_len - 1:self.cur_len].copy()

    def update(self, logits: np.ndarray) -> None:
        scores = self.processors.apply(self.tokens[:, :self.cur_len], logits)
        # np.argmax, like torch.argmax, returns the first of equal maxima.
        next_tokens = np.where(self.unfinished, np.argmax(scores, axis=-1), self.rules.pad_token_id)
        self.tokens[:, self.cur_len] = next_tokens
        self.cur_len += 1
        self.unfinished &= next_tokens != self.rules.eos_token_id
        self.done = not self.unfinished.any() or self.cur_len >= self.max_length
        return None

    def finalize(self) -> np.ndarray:
        return self.tokens[:, :self.cur_len].copy()


class BeamSearchDecoder(TokenDecoder):
    """transformers' vectorized `_beam_search` (do_sample=False, num_return_sequences=1).

    Per batch item it keeps K = num_beams running beams and K finished slots ("sequences"),
    both sorted by score. Each step takes the top 2K continuations of all running beams; the
    best K that did not stop keep running, and those among the first K that did stop compete
    for the finished slots with score sum_logprobs / generated_len ** length_penalty.
    """

    def __init__(self, options: GenerationOptions, rules: TokenRules, processors: ProcessorChain):
        self.options, self.rules = options, rules
        self.processors = processors
        self.k = options.num_beams
        self.max_length = _PROMPT_LEN + options.max_new_tokens
        # transformers fills with `pad_token_id or eos_token_id`: a pad id of 0 is falsy there,
        # so beam outputs are then padded with EOS (greedy outputs still use pad_token_id).
        self.fill = rules.pad_token_id or rules.eos_token_id

    def reset(self, batch_size: int) -> None:
        b, k, m = batch_size, self.k, self.max_length
        self.batch_size = b
        self._rows = np.arange(b)[:, None]  # with a [b, j] index array: picks along the beam axis
        self.running = np.full((b, k, m), self.fill, dtype=np.int64)
        self.running[:, :, 0] = self.rules.decoder_start_token_id
        # Only beam 0 starts live, so the first step does not pick the same token K times.
        self.running_scores = np.full((b, k), _BIG_NEG, dtype=np.float32)
        self.running_scores[:, 0] = 0.0
        self.finished = self.running.copy()
        self.finished_scores = np.full((b, k), _BIG_NEG, dtype=np.float32)
        self.finished_lens = np.zeros((b, k), dtype=np.int64)  # generated tokens; 0 = never filled
        self.is_finished = np.zeros((b, k), dtype=bool)
        self.can_improve = np.ones((b, 1), dtype=bool)  # the early-stop heuristic is unsatisfied
        self.cur_len = _PROMPT_LEN
        self.done = False
        self.processors.reset(b * k)

    def next_input(self) -> np.ndarray:
        return self.running[:, :, self.cur_len - 1].reshape(-1, 1).copy()

    def update(self, logits: np.ndarray) -> np.ndarray:
        b, k, cur = self.batch_size, self.k, self.cur_len
        vocab = logits.shape[1]
        # Processors see log-probabilities here (raw logits in greedy search), as in transformers.
        log_probs = self.processors.apply(self.running[:, :, :cur].reshape(b * k, cur), log_softmax(logits))
        totals = (log_probs.reshape(b, k, vocab) + self.running_scores[:, :, None]).reshape(b, k * vocab)
        scores, flat_idx = topk(totals, 2 * k)
        source, tokens = np.divmod(flat_idx, vocab)
        candidates = self.running[self._rows, source]  # [b, 2k, max_length]
        candidates[:, :, cur] = tokens
        stops = (tokens == self.rules.eos_token_id) | (cur + 1 >= self.max_length)

        # Stopped candidates cannot keep running: push them below every live one.
        live_scores = scores + stops.astype(np.float32) * _BIG_NEG
        live_scores, keep = topk(live_scores, k)
        self.running = candidates[self._rows, keep]
        self.running_scores = live_scores
        beam_idx = (source[self._rows, keep] + self._rows * k).reshape(-1)

        self._update_finished(candidates, scores, stops)
        self.cur_len = cur + 1
        self._update_heuristic()
        self.done = not (self.can_improve.any()
                         and not (self.is_finished.all() and self.options.early_stopping is True)
                         and not stops.all())
        self.processors.reorder(beam_idx)
        return beam_idx

    def _update_finished(self, candidates: np.ndarray, scores: np.ndarray, stops: np.ndarray) -> None:
        """Merges the stopped top-K candidates into the finished slots (`_update_finished_beams`)."""
        b, k, cur = self.batch_size, self.k, self.cur_len
        opts = self.options
        gen_len = cur + 1 - _PROMPT_LEN  # generated tokens, EOS included, decoder start excluded
        just_finished = stops.copy()
        just_finished[:, k:] = False  # only the top K may finish; the rest are spares
        # The additions below run one by one, in transformers' order: float32 rounding near -1e9 depends on it.
        scores = scores / np.float32(gen_len ** opts.length_penalty)
        full = self.is_finished.all(axis=-1, keepdims=True) & (opts.early_stopping is True)
        scores = scores + full.astype(np.float32) * _BIG_NEG
        scores = scores + (~self.can_improve).astype(np.float32) * _BIG_NEG
        scores = scores + (~just_finished).astype(np.float32) * _BIG_NEG

        merged_scores = np.concatenate([self.finished_scores, scores], axis=1)
        self.finished_scores, best = topk(merged_scores, k)
        rows = self._rows
        self.finished = np.concatenate([self.finished, candidates], axis=1)[rows, best]
        self.finished_lens = np.concatenate([self.finished_lens, np.full((b, 2 * k), gen_len)], axis=1)[rows, best]
        self.is_finished = np.concatenate([self.is_finished, just_finished], axis=1)[rows, best]

    def _update_heuristic(self) -> None:
        """Can a running beam still beat the worst finished one? (`_check_early_stop_heuristic`)"""
        opts = self.options
        if opts.early_stopping == "never" and opts.length_penalty > 0.0:
            best_len = self.max_length - _PROMPT_LEN  # the longest possible, best under a positive penalty
        else:
            best_len = self.cur_len - _PROMPT_LEN
        best_running = self.running_scores[:, :1] / np.float32(best_len ** opts.length_penalty)
        # A slot not yet finished counts as -1e9, so the batch item can improve until all K are finished.
        worst_finished = np.where(self.is_finished, self.finished_scores.min(axis=1, keepdims=True), _BIG_NEG)
        self.can_improve &= (best_running > worst_finished).any(axis=-1, keepdims=True)

    def finalize(self) -> np.ndarray:
        # Slot 0 is the best; the output is as wide as the longest best hypothesis of the batch.
        width = _PROMPT_LEN + int(self.finished_lens[:, 0].max())
        return self.finished[:, 0, :width].copy()


def make_decoder(options: GenerationOptions, rules: TokenRules) -> TokenDecoder:
    processors = build_processors(options, rules)
    if options.num_beams == 1:
        return GreedyDecoder(options, rules, processors)
    return BeamSearchDecoder(options, rules, processors)


def _check_logits(logits: np.ndarray, rows: int, options: GenerationOptions, rules: TokenRules) -> np.ndarray:
    """Validates the step model's output; returns an owned float32 copy (processors write into it)."""
    needed = 1 + max(i for i in (rules.eos_token_id, options.forced_bos_token_id,
                                 options.forced_eos_token_id) if i is not None)
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != rows or shape[1] < needed:
        raise ValueError(f"Expected step logits of shape ({rows}, V >= {needed}), got {shape}")
    # transformers upcasts logits to float32 before processing; a copy also keeps the step's buffer intact.
    return np.array(logits, dtype=np.float32)


def decode(step: StepModel, batch_size: int, options: GenerationOptions, rules: TokenRules = TokenRules()) -> np.ndarray:
    """Returns int64 [batch_size, L]: exactly `model.generate(...)` for the same options and token
    rules (decoder_start_token_id first, rows padded as transformers pads them)."""
    verify_options(options, rules)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    decoder = make_decoder(options, rules)
    decoder.reset(batch_size)
    rows = batch_size * options.num_beams
    while not decoder.done:
        logits = _check_logits(step(decoder.next_input()), rows, options, rules)
        beam_idx = decoder.update(logits)
        if beam_idx is not None and not decoder.done:  # the cache is dropped after the last step
            step.reorder(beam_idx)
    return decoder.finalize()


def padding_fill(options: GenerationOptions, rules: TokenRules) -> int:
    """What generate() pads a finished row with: pad_token_id in greedy search, `pad or eos` in beam
    search (a pad id of 0 is falsy there)."""
    return rules.pad_token_id if options.num_beams == 1 else (rules.pad_token_id or rules.eos_token_id)
