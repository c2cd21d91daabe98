"""Prompt ids in, text out, with only the `tokenizers` package and the artifact's tokenizer.json.

Florence2Processor tokenizes `<image>*577 + <s> + prompt + </s>` without the tokenizer's own
special-token template; the runtime puts image features where the `<image>` tokens would be, so
a prompt's ids are `[bos] + encode(prompt) + [eos]`. Decoding keeps special tokens, as the
processor's `batch_decode(..., skip_special_tokens=False)` before `post_process_generation`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ArtifactError


class PromptTokenizer:
    def __init__(self, path: str | Path, bos: int, eos: int, pad: int):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise ArtifactError(f"cannot read tokenizer {path}: {str(err).splitlines()[0]}") from None
        self.bos, self.eos, self.pad_id = bos, eos, pad

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, prompt: str) -> list[int]:
        return [self.bos, *self._tokenizer.encode(prompt, add_special_tokens=False).ids, self.eos]

    def encode_batch(self, prompts: list[str], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids and their mask, int64 [B, T], as the processor pads a batch; T is the
        longest prompt, or `width` (a static artifact's prompt bucket, never shorter than the prompts)."""
        return self.pad([self.encode(p) for p in prompts], width)

    def pad(self, encoded: list[list[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`encode_batch` for prompts already encoded."""
        width = max([len(ids) for ids in encoded] + [width or 0])
        ids = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
