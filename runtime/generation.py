"""Generation options: what a caller chooses (`GenerationOptions`) apart from what the artifact fixes
(`TokenRules`), each a frozen dataclass checked in one place.

The fields and their meaning follow `transformers.GenerationConfig` for an encoder-decoder model
whose decoder prompt is the single `decoder_start_token_id`; `runtime.search.decode` reproduces
`model.generate(...)` for them. Every bad value raises `OptionError`, which is both a
`Florence2Error` (a user's mistake) and a `ValueError` (a bad argument).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import Florence2Error


class OptionError(Florence2Error, ValueError):
    """A generation option that is unknown, owned by the artifact, or out of range."""


@dataclass(frozen=True)
class TokenRules:
    """What the artifact fixes: the ids decoding starts, ends and pads with, and the ids it may emit."""

    decoder_start_token_id: int = 2
    eos_token_id: int = 2
    pad_token_id: int = 1
    # Ids >= vocab_size (padding rows of the embedding) are never chosen; None: every id of the logits.
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            _check_int(self, name, 0)
        _check_int(self, "vocab_size", 1, optional=True)
        if self.vocab_size is not None and self.eos_token_id >= self.vocab_size:
            raise OptionError(f"eos_token_id must be < vocab_size ({self.vocab_size}), got {self.eos_token_id}")


# Names a caller might pass that belong to the artifact, not to a call.
ARTIFACT_OWNED = tuple(f.name for f in dataclasses.fields(TokenRules)) + ("bos_token_id",)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options a caller may set; invalid values raise OptionError on construction and in `replace`."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0  # EOS is masked until this many tokens are generated
    num_beams: int = 1  # 1: greedy search
    no_repeat_ngram_size: int = 0  # 0: off
    early_stopping: bool | str = False  # True, False or "never" (beam search only)
    length_penalty: float = 1.0  # finished beam score = sum_logprobs / generated_len ** length_penalty
    forced_bos_token_id: int | None = None  # forced as the first generated token
    forced_eos_token_id: int | None = None  # forced as the last token when max_new_tokens is reached

    def __post_init__(self) -> None:
        verify_options(self)

    def replace(self, **overrides) -> GenerationOptions:
        """A copy with `overrides` applied (and verified); unknown or artifact-owned names raise OptionError."""
        accepted = [f.name for f in dataclasses.fields(self)]
        owned = sorted(set(overrides) & set(ARTIFACT_OWNED))
        if owned:
            raise OptionError(f"{owned[0]} is fixed by the artifact (its manifest), not a generation option; "
                              f"accepted: {', '.join(accepted)}")
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise OptionError(f"unknown generation option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        return dataclasses.replace(self, **overrides)


def _is_int(value) -> bool:
    # bool is an int subclass, but `num_beams=True` is a mistake, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(options, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(options, name)
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if optional else "")
        raise OptionError(f"{name} must be {accepted}, got {value!r}")


def verify_options(options: GenerationOptions, rules: TokenRules | None = None) -> None:
    """Raises OptionError, naming the accepted values, for the first invalid option; with `rules`,
    also for forced ids the artifact could never emit."""
    _check_int(options, "max_new_tokens", 1)
    _check_int(options, "min_new_tokens", 0)
    _check_int(options, "num_beams", 1)
    _check_int(options, "no_repeat_ngram_size", 0)
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        _check_int(options, name, 0, optional=True)
    if options.min_new_tokens > options.max_new_tokens:
        raise OptionError(
            f"min_new_tokens must be <= max_new_tokens ({options.max_new_tokens}), got {options.min_new_tokens}"
        )
    early = options.early_stopping
    if not (isinstance(early, bool) or (isinstance(early, str) and early == "never")):  # 1 is not True here
        raise OptionError(f"early_stopping must be True, False or 'never', got {options.early_stopping!r}")
    penalty = options.length_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty):
        raise OptionError(f"length_penalty must be a finite float, got {penalty!r}")
    if rules is not None and rules.vocab_size is not None:
        # An id the vocab_size mask suppresses could never be generated, so forcing it is a mistake.
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(options, name)
            if value is not None and value >= rules.vocab_size:
                raise OptionError(f"{name} must be < vocab_size ({rules.vocab_size}), got {value}")
