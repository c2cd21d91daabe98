"""Generation options: one frozen dataclass, checked in one place (`verify_options`).

The fields and their meaning follow `transformers.GenerationConfig` for an encoder-decoder model
whose decoder prompt is the single `decoder_start_token_id`; `runtime.search.decode` reproduces
`model.generate(...)` for them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options; invalid values raise ValueError on construction and in `replace`."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0  # EOS is masked until this many tokens are generated
    num_beams: int = 1  # 1: greedy search
    no_repeat_ngram_size: int = 0  # 0: off
    early_stopping: bool | str = False  # True, False or "never" (beam search only)
    length_penalty: float = 1.0  # finished beam score = sum_logprobs / generated_len ** length_penalty
    forced_bos_token_id: int | None = None  # forced as the first generated token
    forced_eos_token_id: int | None = None  # forced as the last token when max_new_tokens is reached
    decoder_start_token_id: int = 2
    eos_token_id: int = 2
    pad_token_id: int = 1
    # Ids >= vocab_size (padding rows of the embedding) are never chosen; None: every id of the logits.
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        verify_options(self)

    def replace(self, **overrides) -> GenerationOptions:
        """A copy with `overrides` applied (and verified); unknown names raise ValueError."""
        accepted = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; accepted: {accepted}")
        return dataclasses.replace(self, **overrides)


def _is_int(value) -> bool:
    # bool is an int subclass, but `num_beams=True` is a mistake, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(options: GenerationOptions, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(options, name)
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def verify_options(options: GenerationOptions) -> None:
    """Raises ValueError, naming the accepted values, for the first invalid option."""
    _check_int(options, "max_new_tokens", 1)
    _check_int(options, "min_new_tokens", 0)
    _check_int(options, "num_beams", 1)
    _check_int(options, "no_repeat_ngram_size", 0)
    for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        _check_int(options, name, 0)
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        _check_int(options, name, 0, optional=True)
    _check_int(options, "vocab_size", 1, optional=True)

    if options.min_new_tokens > options.max_new_tokens:
        raise ValueError(
            f"min_new_tokens must be <= max_new_tokens ({options.max_new_tokens}), got {options.min_new_tokens}"
        )
    early = options.early_stopping
    if not (isinstance(early, bool) or (isinstance(early, str) and early == "never")):  # 1 is not True here
        raise ValueError(f"early_stopping must be True, False or 'never', got {options.early_stopping!r}")
    penalty = options.length_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty):
        raise ValueError(f"length_penalty must be a finite float, got {penalty!r}")
    if options.vocab_size is not None:
        # An id the vocab_size mask suppresses could never be generated, so forcing it is a mistake.
        for name in ("eos_token_id", "forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(options, name)
            if value is not None and value >= options.vocab_size:
                raise ValueError(f"{name} must be < vocab_size ({options.vocab_size}), got {value}")
