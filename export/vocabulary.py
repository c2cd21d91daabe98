"""The Florence-2 vocabulary: the tokens every Florence-2 tokenizer carries, and a BPE builder for
offline checkpoints.

The tokens are a fact of the model family (the original processor adds them to BART's vocabulary at
run time, transformers' conversion saves them in the tokenizer), so both the embedded checkpoints and
the original-layout loader take them from here.
"""

from __future__ import annotations

# Tokens the original Florence-2 processor adds to BART's vocabulary, in its order.
FLORENCE_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]
    + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
       "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
       "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"]
)
IMAGE_TOKEN = "<image>"
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in BART


def build_tokenizer(corpus: list[str], bpe_vocab_size: int = 600):
    """A BART tokenizer (byte-level BPE trained on `corpus` lines) with every Florence-2 token added
    after `<mask>`, then `<image>` as a named extra special token (as transformers' conversion saves it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AddedToken, BartTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=bpe_vocab_size, min_frequency=1,
                            special_tokens=BART_SPECIALS, show_progress=False)
    tokenizer = BartTokenizer(vocab=bpe.get_vocab(), merges=_merges(bpe),
                              extra_special_tokens={"image_token": IMAGE_TOKEN})
    added = ["<mask>"] + FLORENCE_TOKENS + [IMAGE_TOKEN]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in added], special_tokens=True)
    return tokenizer


def _merges(bpe) -> list[tuple[str, str]]:
    import json

    model = json.loads(bpe._tokenizer.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
