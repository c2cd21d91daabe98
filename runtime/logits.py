"""Logits processors: each masks scores with one `apply(input_ids, scores) -> scores`.

They mirror transformers' `NoRepeatNGramLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`,
`ForcedBOSTokenLogitsProcessor`, `ForcedEOSTokenLogitsProcessor` and `SuppressTokensLogitsProcessor`,
and `build_processors` chains them in the order `GenerationMixin._get_logits_processor` does.

Shapes: `input_ids` int64 [N, cur_len] (decoder start token first, N = batch * num_beams rows);
`scores` float32 [N, V], raw logits for greedy search and log-probabilities for beam search.
`apply` may write into `scores` (the decoder owns that array) and returns it.
"""

from __future__ import annotations

import numpy as np

from .generation import GenerationOptions, TokenRules

NEG_INF = np.float32(-np.inf)


class LogitsProcessor:
    """One mask on the scores. Processors that keep per-row state also override reset/reorder."""

    def reset(self, num_rows: int) -> None:
        """Called before the first step of a decode with N = batch * num_beams rows."""

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Row i now continues old row beam_idx[i] (beam search), as the decoder's KV cache does."""

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NoRepeatNGram(LogitsProcessor):
    """Bans any token that would complete an n-gram already present in the row.

    transformers rescans every window of every row each step; here each row keeps a table
    {(n-1)-gram prefix: tokens that followed it}, fed one window per step, so a step costs
    O(rows) dict operations instead of O(rows * length).
    """

    def __init__(self, ngram_size: int):
        self.n = ngram_size
        self._tables: list[dict[tuple, tuple]] = []
        self._next_start = 0  # first window start not yet added to the tables

    def reset(self, num_rows: int) -> None:
        self._tables = [{} for _ in range(num_rows)]
        self._next_start = 0

    def reorder(self, beam_idx: np.ndarray) -> None:
        # Tables are shared by reference when a row survives once; a row that several beams
        # continue is copied (values are tuples, so a shallow copy is independent).
        tables, taken = [], set()
        for src in beam_idx.tolist():
            table = self._tables[src]
            tables.append(table.copy() if src in taken else table)
            taken.add(src)
        self._tables = tables

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n, cur_len = self.n, input_ids.shape[1]
        if cur_len < n:  # no complete n-gram yet
            return scores
        start = self._next_start
        tail = input_ids[:, start:].tolist()  # only the tokens that new windows or the prefix need
        self._next_start = cur_len - n + 1
        rows, cols = [], []
        for row, (table, ids) in enumerate(zip(self._tables, tail)):
            for s in range(self._next_start - start):
                key = tuple(ids[s:s + n - 1])
                table[key] = table.get(key, ()) + (ids[s + n - 1],)
            banned = table.get(tuple(ids[len(ids) - n + 1:]), ())
            rows.extend([row] * len(banned))
            cols.extend(banned)
        if rows:
            scores[rows, cols] = NEG_INF
        return scores


class MinNewTokens(LogitsProcessor):
    """EOS is impossible until `min_new_tokens` tokens follow the decoder start token."""

    def __init__(self, min_new_tokens: int, eos_token_id: int, prompt_len: int = 1):
        self.min_length = prompt_len + min_new_tokens
        self.eos_token_id = eos_token_id

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] < self.min_length:
            scores[:, self.eos_token_id] = NEG_INF
        return scores


class ForcedToken(LogitsProcessor):
    """At one length, every token but `token_id` gets -inf and `token_id` gets 0.

    ForcedBOS: length 1 (the first generated token). ForcedEOS: length max_length - 1.
    """

    def __init__(self, token_id: int, at_length: int):
        self.token_id = token_id
        self.at_length = at_length

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] == self.at_length:
            scores[:] = NEG_INF
            scores[:, self.token_id] = 0.0
        return scores


class SuppressFrom(LogitsProcessor):
    """-inf for every id >= vocab_size: SuppressTokensLogitsProcessor(range(vocab_size, V))."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[:, self.vocab_size:] = NEG_INF
        return scores


class ProcessorChain(LogitsProcessor):
    """Applies processors in order; reset/reorder reach every one."""

    def __init__(self, processors: list[LogitsProcessor]):
        self.processors = processors

    def reset(self, num_rows: int) -> None:
        for p in self.processors:
            p.reset(num_rows)

    def reorder(self, beam_idx: np.ndarray) -> None:
        for p in self.processors:
            p.reorder(beam_idx)

    def apply(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for p in self.processors:
            scores = p.apply(input_ids, scores)
        return scores


def build_processors(options: GenerationOptions, rules: TokenRules) -> ProcessorChain:
    """The processors `options` asks for, in transformers' `_get_logits_processor` order."""
    prompt_len = 1  # the decoder prompt is the decoder start token alone
    max_length = prompt_len + options.max_new_tokens
    chain: list[LogitsProcessor] = []
    if options.no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGram(options.no_repeat_ngram_size))
    if options.min_new_tokens > 0:
        # transformers adds MinLength(min_new_tokens + 1) and MinNewTokens(1, min_new_tokens): the same mask.
        chain.append(MinNewTokens(options.min_new_tokens, rules.eos_token_id, prompt_len))
    if options.forced_bos_token_id is not None:
        chain.append(ForcedToken(options.forced_bos_token_id, at_length=prompt_len))
    if options.forced_eos_token_id is not None:
        chain.append(ForcedToken(options.forced_eos_token_id, at_length=max_length - 1))
    if rules.vocab_size is not None:
        chain.append(SuppressFrom(rules.vocab_size))
    return ProcessorChain(chain)
