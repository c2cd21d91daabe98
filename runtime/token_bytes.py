"""The id -> token-bytes table of a `--mobile` artifact: ids to text with no tokenizer library.

`token_bytes.json` (named by the manifest's `mobile.token_bytes`, listed in `files` with its sha256):

    {"format": "florence2-edge token bytes", "version": 1, "encoding": "base64",
     "special": [0, 1, 2, 3, ...],          ids of special tokens (<s>, <pad>, </s>, <unk>, ...)
     "tokens": ["PHM+", "PHBhZD4=", ...]}   tokens[id] = base64 of that token's bytes, for every id
                                             below dims.tokenizer_size

Text = the bytes of the ids concatenated, decoded as UTF-8 with U+FFFD for invalid sequences: what
tokenizers' ByteLevel decoder (`Tokenizer.decode(ids, skip_special_tokens=False)`) returns, which is
what the runtime parses. One token may hold part of a UTF-8 character, so decode the whole sequence,
never token by token. JSON and base64 because every app platform reads both with its standard
library (Kotlin/Java: org.json or kotlinx.serialization, java.util.Base64; Swift: JSONDecoder, Data).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .errors import ArtifactError

TOKEN_BYTES_NAME = "token_bytes.json"
FORMAT = "florence2-edge token bytes"
VERSION = 1


def encode_table(table: list[bytes], special: list[int]) -> dict:
    return {"format": FORMAT, "version": VERSION, "encoding": "base64", "special": list(special),
            "tokens": [base64.b64encode(token).decode("ascii") for token in table]}


def read_token_bytes(path: str | Path) -> list[bytes]:
    """The table as a list indexed by id; ArtifactError naming what is wrong with the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ArtifactError(f"{path} is not a {FORMAT} file of version {VERSION}")
    try:
        return [base64.b64decode(token, validate=True) for token in data["tokens"]]
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}: expected \"tokens\", a list of base64 strings") from None


def decode_bytes(table: list[bytes], ids) -> str:
    """The text of `ids` (special tokens kept), as tokenizers decodes it."""
    try:
        data = b"".join(table[int(i)] for i in ids)
    except IndexError:
        raise ArtifactError(f"an id in {list(ids)[:8]}... is past the token table's {len(table)} ids") from None
    return data.decode("utf-8", errors="replace")
