"""What a manifest implies for generation: the artifact's token rules and the checkpoint's defaults.

Defaults follow the checkpoint's generation config, within what the artifact can run: a default
max_new_tokens beyond the decoder's positions (or a static artifact's KV slots), or a default beam
count beyond a static artifact's rows, is lowered to fit; the same values asked for explicitly are
refused by `Contract.check_request`.
"""

from __future__ import annotations

from .errors import ArtifactError
from .generation import GenerationOptions, OptionError, TokenRules

# Both functions take a runtime.manifest.Manifest (its generation, tokens, dims and static fields);
# the manifest calls them to check itself, so this module does not import it back.


def _single(value, name: str):
    """transformers allows a list of EOS ids; this runtime decodes with one."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ArtifactError(f"manifest generation.{name}: several ids {value} are not supported; expected one")
        return value[0]
    return value


def token_rules(manifest) -> TokenRules:
    g, tokens, dims = manifest.generation, manifest.tokens, manifest.dims
    eos = _single(g.eos_token_id, "eos_token_id")
    try:
        return TokenRules(
            decoder_start_token_id=tokens.decoder_start,
            eos_token_id=tokens.eos if eos is None else eos,
            pad_token_id=tokens.pad if g.pad_token_id is None else g.pad_token_id,
            # Embedding rows past the tokenizer (padding for alignment) are never a real token.
            vocab_size=dims.tokenizer_size if dims.tokenizer_size < dims.vocab_size else None,
        )
    except OptionError as err:
        raise ArtifactError(f"manifest generation: {err}") from None


def _given(value, default):
    return default if value is None else value


def default_options(manifest) -> GenerationOptions:
    g, dims, static = manifest.generation, manifest.dims, manifest.static
    max_new = _given(g.max_new_tokens, (g.max_length - 1) if g.max_length is not None else 20)
    if max_new >= 1:  # an invalid value is left for GenerationOptions to name
        max_new = min(max_new, dims.max_positions, static.max_decode if static else max_new)
    num_beams = _given(g.num_beams, 1)
    if static and num_beams >= 1:
        num_beams = min(num_beams, static.beams)
    try:
        return GenerationOptions(
            max_new_tokens=max_new,
            min_new_tokens=min(_given(g.min_new_tokens, 0), max(max_new, 0)),
            num_beams=num_beams,
            no_repeat_ngram_size=_given(g.no_repeat_ngram_size, 0),
            early_stopping=_given(g.early_stopping, False),
            length_penalty=_given(g.length_penalty, 1.0),
            forced_bos_token_id=g.forced_bos_token_id,
            forced_eos_token_id=_single(g.forced_eos_token_id, "forced_eos_token_id"),
        )
    except OptionError as err:
        raise ArtifactError(f"manifest generation: {err}") from None
