"""Golden parity of runtime.search.decode with transformers' generate() on a tiny random BART.

The reference is the real `BartForConditionalGeneration.generate`; `decode` drives the same
model's decoder one token at a time through a StepModel adapter with a transformers
EncoderDecoderCache, so both see bit-identical logits and any difference is the search's.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import Florence2Error
from runtime.generation import GenerationOptions, OptionError, TokenRules, verify_options
from runtime.logits import NoRepeatNGram
from runtime.search import decode, log_softmax, topk

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig  # noqa: E402
from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: E402
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

VOCAB = 96
BOS, PAD, EOS = 0, 1, 2
SEEDS = (0, 1, 2)
# An EOS logit bias per seed: EOS comes after ~3-20 tokens in some rows and never in others.
EOS_BIAS = {0: 0.0, 1: 0.5, 2: 1.0}
FORCED = ((None, None), (BOS, None), (None, EOS), (BOS, EOS))  # (forced_bos, forced_eos)
RULES = TokenRules(decoder_start_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A 32-wide model is all per-op overhead; extra threads only slow it down (and change nothing).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_model(seed: int, eos_bias: float) -> BartForConditionalGeneration:
    config = BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, tie_word_embeddings=False,
        init_std=0.1,  # the default 0.02 gives a decoder that ignores the encoder and repeats itself
        bos_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=EOS,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(config).eval()
    # BART's default generation config forces EOS; start from a neutral one so only the test's options apply.
    model.generation_config = GenerationConfig(
        bos_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=EOS)
    with torch.no_grad():
        model.final_logits_bias[0, EOS] = eos_bias
    return model


def encode(model, batch_size: int, seed: int):
    """Encoder states and mask for a random batch; row 1 (if any) is padded."""
    gen = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(3, VOCAB, (batch_size, 7), generator=gen)
    mask = torch.ones(batch_size, 7, dtype=torch.long)
    if batch_size > 1:
        mask[1, 5:] = 0
    with torch.no_grad():
        hidden = model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden, mask


@pytest.fixture(scope="module")
def cases():
    """seed -> (model, {batch_size: (encoder_hidden, mask)})."""
    out = {}
    for seed in SEEDS:
        model = build_model(seed, EOS_BIAS[seed])
        out[seed] = (model, {b: encode(model, b, seed) for b in (1, 2)})
    return out


class TorchStep:
    """StepModel over the BART decoder + lm_head, with a transformers cache."""

    def __init__(self, model, hidden, mask, num_beams: int):
        self.model = model
        # generate() expands the encoder outputs per beam the same way.
        self.hidden = hidden.repeat_interleave(num_beams, dim=0)
        self.mask = mask.repeat_interleave(num_beams, dim=0)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.steps = 0

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        assert input_ids.dtype == np.int64 and input_ids.shape == (self.hidden.shape[0], 1)
        self.steps += 1
        with torch.no_grad():
            out = self.model.model.decoder(
                input_ids=torch.from_numpy(input_ids), encoder_hidden_states=self.hidden,
                encoder_attention_mask=self.mask, past_key_values=self.cache, use_cache=True)
            logits = self.model.lm_head(out.last_hidden_state) + self.model.final_logits_bias
        return logits[:, -1].numpy()

    def reorder(self, beam_idx: np.ndarray) -> None:
        assert beam_idx.dtype == np.int64 and beam_idx.shape == (self.hidden.shape[0],)
        self.cache.reorder_cache(torch.from_numpy(beam_idx))


def reference(model, hidden, mask, options: GenerationOptions, rules: TokenRules, **extra) -> tuple[np.ndarray, int]:
    """generate()'s ids, and how many decoder steps it ran."""
    steps = []
    hook = model.model.decoder.register_forward_pre_hook(lambda *_: steps.append(1))
    with torch.no_grad(), hook:
        out = model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
            num_beams=options.num_beams, max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens, no_repeat_ngram_size=options.no_repeat_ngram_size,
            early_stopping=options.early_stopping, length_penalty=options.length_penalty,
            forced_bos_token_id=options.forced_bos_token_id, forced_eos_token_id=options.forced_eos_token_id,
            decoder_start_token_id=rules.decoder_start_token_id, eos_token_id=rules.eos_token_id,
            pad_token_id=rules.pad_token_id, do_sample=False, **extra)
    return out.numpy(), len(steps)


def assert_parity(cases, seed: int, batch_size: int, options: GenerationOptions, rules: TokenRules = RULES,
                  **extra) -> np.ndarray:
    model, inputs = cases[seed]
    hidden, mask = inputs[batch_size]
    expected, expected_steps = reference(model, hidden, mask, options, rules, **extra)
    step = TorchStep(model, hidden, mask, options.num_beams)
    got = decode(step, batch_size, options, rules)
    assert got.dtype == np.int64
    assert got.shape == expected.shape and np.array_equal(got, expected), (
        f"seed={seed} batch={batch_size} {options}\nexpected\n{expected}\ngot\n{got}")
    # Stopping at the same step matters too: a late stop gives the same ids but wastes model calls.
    assert step.steps == expected_steps, f"seed={seed} batch={batch_size} {options}"
    return expected


def _others(i: int) -> dict:
    """The i-th combination of the options crossed less densely (no-repeat, min length, forced ids)."""
    no_repeat, min_new, forced = list(itertools.product((0, 3), (0, 5), FORCED))[i % 16]
    return dict(no_repeat_ngram_size=no_repeat, min_new_tokens=min_new,
                forced_bos_token_id=forced[0], forced_eos_token_id=forced[1])


@pytest.mark.parametrize("no_repeat", (0, 3))
@pytest.mark.parametrize("min_new", (0, 5))
@pytest.mark.parametrize("forced", FORCED, ids=lambda f: f"bos{f[0]}-eos{f[1]}")
def test_greedy_matches_generate(cases, no_repeat, min_new, forced):
    options = GenerationOptions(max_new_tokens=20, no_repeat_ngram_size=no_repeat, min_new_tokens=min_new,
                                forced_bos_token_id=forced[0], forced_eos_token_id=forced[1])
    for seed, batch_size in itertools.product(SEEDS, (1, 2)):
        assert_parity(cases, seed, batch_size, options)


BEAM_GRID = list(itertools.product((2, 3, 4), (True, False, "never"), (1.0, 0.5, 2.0)))


@pytest.mark.parametrize("cell", range(len(BEAM_GRID)), ids=lambda c: "beams{}-es{}-lp{}".format(*BEAM_GRID[c]))
def test_beam_search_matches_generate(cases, cell):
    num_beams, early_stopping, length_penalty = BEAM_GRID[cell]
    # Each cell runs 6 (seed, batch) cases with 6 consecutive (no-repeat, min length, forced ids)
    # combinations, so across cells every combination meets every beams/early_stopping/penalty value.
    for k, (seed, batch_size) in enumerate(itertools.product(SEEDS, (1, 2))):
        options = GenerationOptions(max_new_tokens=20, num_beams=num_beams, early_stopping=early_stopping,
                                    length_penalty=length_penalty, **_others(cell * 6 + k))
        assert_parity(cases, seed, batch_size, options)


def test_fixture_exercises_eos_and_padding(cases):
    """The grid above is only meaningful if rows end early, at different steps, and some never do."""
    lengths = []
    for seed in SEEDS:
        out = assert_parity(cases, seed, 2, GenerationOptions(max_new_tokens=20))
        lengths += [int((row != PAD).sum()) for row in out]
        beams = assert_parity(cases, seed, 2, GenerationOptions(max_new_tokens=20, num_beams=3))
        lengths += [int((row != PAD).sum()) for row in beams]
    assert min(lengths) <= 8 and max(lengths) == 21, lengths  # 21 = start token + max_new_tokens
    assert len(set(lengths)) >= 4, lengths


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def test_options_change_the_result(cases):
    """Each option value the grid varies changes some output, so parity on it is not vacuous."""
    variants = [("early_stopping", True), ("early_stopping", "never"), ("length_penalty", 0.5),
                ("length_penalty", 2.0), ("no_repeat_ngram_size", 3), ("min_new_tokens", 5),
                ("forced_bos_token_id", BOS), ("forced_eos_token_id", EOS)]
    changed = dict.fromkeys(variants, False)
    for seed, num_beams in itertools.product(SEEDS, (1, 2, 4)):
        plain = GenerationOptions(max_new_tokens=20, num_beams=num_beams)
        expected = assert_parity(cases, seed, 2, plain)
        for name, value in variants:
            if num_beams == 1 and name in ("early_stopping", "length_penalty"):
                continue  # beam-only options
            other = assert_parity(cases, seed, 2, plain.replace(**{name: value}))
            changed[name, value] |= _differs(expected, other)
    assert all(changed.values()), changed


@pytest.mark.parametrize("num_beams", (1, 3))
@pytest.mark.parametrize("max_new_tokens", (1, 2, 3))
def test_short_generations_with_forced_tokens(cases, num_beams, max_new_tokens):
    # With one new token, forced BOS and forced EOS fall on the same step: EOS (applied later) wins.
    for forced in FORCED:
        options = GenerationOptions(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    forced_bos_token_id=forced[0], forced_eos_token_id=forced[1])
        for seed in SEEDS:
            assert_parity(cases, seed, 2, options)


@pytest.mark.parametrize("num_beams", (1, 3))
def test_vocab_size_masks_like_suppress_tokens(cases, num_beams):
    vocab_size = 88
    options = GenerationOptions(max_new_tokens=20, num_beams=num_beams)
    masked = TokenRules(decoder_start_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, vocab_size=vocab_size)
    suppressed = list(range(vocab_size, VOCAB))
    saw_high_id = False
    for seed in SEEDS:
        model, inputs = cases[seed]
        with torch.no_grad():  # make the padding ids attractive, so the mask has work to do
            model.final_logits_bias[0, vocab_size:] = 1.5
        try:
            for batch_size in (1, 2):
                out = assert_parity(cases, seed, batch_size, options, masked, suppress_tokens=suppressed)
                assert out.max() < vocab_size
                unmasked = assert_parity(cases, seed, batch_size, options)
                saw_high_id |= bool(unmasked.max() >= vocab_size)
        finally:
            with torch.no_grad():
                model.final_logits_bias[0, vocab_size:] = 0.0
    assert saw_high_id


def _padded_with(out: np.ndarray, fill: int) -> bool:
    """Does some row end with EOS before the last column, followed only by `fill`?"""
    for row in out[:, 1:].tolist():
        if EOS in row[:-1] and set(row[row.index(EOS) + 1:]) == {fill}:
            return True
    return False


def test_beam_output_padding_with_pad_id_zero(cases):
    # generate() fills beam outputs with `pad_token_id or eos_token_id`: a pad id of 0 pads with EOS,
    # while greedy search pads with 0.
    options = GenerationOptions(max_new_tokens=20, num_beams=3)
    pad_zero = TokenRules(decoder_start_token_id=EOS, eos_token_id=EOS, pad_token_id=0)
    beam_outs = [assert_parity(cases, seed, 2, options, pad_zero) for seed in SEEDS]
    greedy_outs = [assert_parity(cases, seed, 2, options.replace(num_beams=1), pad_zero) for seed in SEEDS]
    assert any(_padded_with(out, EOS) for out in beam_outs)
    assert any(_padded_with(out, 0) for out in greedy_outs)


def test_no_repeat_ngram_matches_transformers_under_reordering():
    """The incremental per-row tables agree with transformers' rescan, across beam reorders."""
    rng = np.random.default_rng(0)
    for n, rows, vocab in ((1, 3, 12), (2, 4, 6), (3, 6, 5), (4, 2, 4)):
        ours, theirs = NoRepeatNGram(n), NoRepeatNGramLogitsProcessor(n)
        ours.reset(rows)
        ids = np.full((rows, 1), EOS, dtype=np.int64)
        for _ in range(25):
            scores = rng.standard_normal((rows, vocab)).astype(np.float32)
            expected = theirs(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()
            assert np.array_equal(ours.apply(ids, scores.copy()), expected)
            beam_idx = rng.integers(0, rows, rows)  # duplicates rows, as beam search does
            ours.reorder(beam_idx)
            ids = np.concatenate([ids[beam_idx], rng.integers(0, vocab, (rows, 1))], axis=1)


def test_log_softmax_is_float32_and_close_to_torch():
    x = (np.random.default_rng(1).standard_normal((4, 1000)) * 8).astype(np.float32)
    ours = log_softmax(x)
    assert ours.dtype == np.float32
    # torch's exp/log and summation order differ in the last bits; both are float32-accurate.
    np.testing.assert_allclose(ours, torch.log_softmax(torch.from_numpy(x), -1).numpy(), rtol=0, atol=1e-5)


def test_topk_sorted_with_ties_in_index_order():
    x = np.array([[0.0, -1e9, 5.0, -1e9, -np.inf, -1e9], [-np.inf] * 6], dtype=np.float32)
    values, idx = topk(x, 3)
    assert idx.tolist() == [[2, 0, 1], [0, 1, 2]]
    assert values[0].tolist() == [5.0, 0.0, -1e9]


@pytest.mark.parametrize("overrides, message", [
    (dict(max_new_tokens=0), r"max_new_tokens must be an int >= 1, got 0"),
    (dict(max_new_tokens=2.5), r"max_new_tokens must be an int >= 1"),
    (dict(num_beams=0), r"num_beams must be an int >= 1, got 0"),
    (dict(num_beams=True), r"num_beams must be an int >= 1, got True"),
    (dict(min_new_tokens=-1), r"min_new_tokens must be an int >= 0"),
    (dict(min_new_tokens=30), r"min_new_tokens must be <= max_new_tokens \(20\), got 30"),
    (dict(no_repeat_ngram_size=-1), r"no_repeat_ngram_size must be an int >= 0"),
    (dict(early_stopping="always"), r"early_stopping must be True, False or 'never', got 'always'"),
    (dict(early_stopping=1), r"early_stopping must be True, False or 'never', got 1"),
    (dict(length_penalty=float("nan")), r"length_penalty must be a finite float"),
    (dict(length_penalty="1"), r"length_penalty must be a finite float"),
    (dict(forced_bos_token_id=-1), r"forced_bos_token_id must be an int >= 0 or None"),
])
def test_invalid_options_raise_one_clear_error(overrides, message):
    for build in (lambda: GenerationOptions(**overrides), lambda: GenerationOptions().replace(**overrides)):
        with pytest.raises(OptionError, match=message) as err:
            build()
        # One class for every bad option: both a Florence2Error (a user's mistake) and a ValueError.
        assert isinstance(err.value, Florence2Error) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("overrides, message", [
    (dict(eos_token_id=None), r"eos_token_id must be an int >= 0, got None"),
    (dict(vocab_size=0), r"vocab_size must be an int >= 1 or None"),
    (dict(vocab_size=2), r"eos_token_id must be < vocab_size \(2\), got 2"),
])
def test_invalid_token_rules(overrides, message):
    with pytest.raises(OptionError, match=message):
        TokenRules(**overrides)


def test_forced_ids_must_be_inside_the_vocabulary():
    rules = TokenRules(vocab_size=50)
    with pytest.raises(OptionError, match=r"forced_bos_token_id must be < vocab_size \(50\), got 60"):
        verify_options(GenerationOptions(forced_bos_token_id=60), rules)


@pytest.mark.parametrize("name", ["eos_token_id", "pad_token_id", "decoder_start_token_id", "vocab_size", "bos_token_id"])
def test_artifact_owned_names_are_not_options(name):
    with pytest.raises(OptionError, match=rf"{name} is fixed by the artifact .*accepted: max_new_tokens, "):
        GenerationOptions().replace(**{name: None})


def test_replace_rejects_unknown_names_and_keeps_the_rest():
    with pytest.raises(OptionError, match=r"unknown generation option\(s\) beams; accepted: .*num_beams"):
        GenerationOptions().replace(beams=3)
    options = GenerationOptions(max_new_tokens=7).replace(num_beams=3)
    assert (options.max_new_tokens, options.num_beams) == (7, 3)
    verify_options(options)


def test_decode_checks_the_step_output():
    class Wrong:
        def __call__(self, input_ids):
            return np.zeros((input_ids.shape[0] + 1, VOCAB), dtype=np.float32)

        def reorder(self, beam_idx):
            pass

    with pytest.raises(ValueError, match=r"Expected step logits of shape \(6, V >= 3\), got \(7, 96\)"):
        decode(Wrong(), 2, GenerationOptions(num_beams=3))


def test_runtime_decoding_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import runtime.generation, runtime.logits, runtime.search")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
