"""A checkpoint's weight files: which ones a loader reads, each checked before any heavy work, so that
a truncated, random or malicious file is one line naming it and what is wrong, not a loader traceback.

- safetensors: the header (an 8-byte length, then JSON) must describe exactly the bytes of the file.
- pytorch_model.bin: a zip archive (what torch.save writes), unpickled with `weights_only`: a pickle
  that would build anything but tensors (run code) is refused, never loaded.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

from .errors import ExportError

SAFETENSORS, TORCH_BIN = "model.safetensors", "pytorch_model.bin"
_MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces


def weight_files(folder: Path) -> list[Path]:
    """The files a loader reads, in the order transformers prefers them: safetensors (single or
    sharded), else pytorch_model.bin (single or sharded). Empty if there are none."""
    for name in (SAFETENSORS, TORCH_BIN):
        index = folder / f"{name}.index.json"
        if index.is_file():
            return [folder / shard for shard in _shards(index)]
        if (folder / name).is_file():
            return [folder / name]
    return []


def check_weights(folder: Path) -> None:
    for path in weight_files(folder):
        if not path.is_file():
            raise ExportError(f"{path} is missing: {path.parent} lists it in its weights index")
        check_weight_file(path)


def check_weight_file(path: Path) -> None:
    if path.name.endswith(".safetensors"):
        problem = _safetensors_problem(path)
    else:
        problem = _torch_problem(path)
    if problem:
        raise ExportError(f"{path}: {problem}")


def read_weight_file(path: Path) -> dict:
    """Tensor name -> tensor, after `check_weight_file`."""
    import torch
    from safetensors.torch import load_file

    check_weight_file(path)
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        return torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as err:  # safetensors' and torch's own error types
        raise ExportError(f"{path}: cannot read the weights: {_first_line(err)}") from None


def _shards(index: Path) -> list[str]:
    try:
        names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return sorted({str(n) for n in names})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"{index} is not a weights index: expected {{\"weight_map\": {{tensor: file}}}}") from None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated or empty ({size} bytes): a safetensors file starts with an 8-byte header length"
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _MAX_HEADER):
            return (f"not a safetensors file (its first 8 bytes give a header of {length} bytes, the file has {size}): "
                    "random bytes, another format, or truncated")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        end = max([0, *(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not a safetensors file (its header is not the JSON table of tensors safetensors writes)"
    expected = 8 + length + end
    if size < expected:
        return f"truncated: {size} bytes, its header describes {expected}"
    if size > expected:
        return f"damaged: {size} bytes, its header describes {expected}"
    return None


def _torch_problem(path: Path) -> str | None:
    import torch

    if not zipfile.is_zipfile(path):
        return ("truncated or not a PyTorch checkpoint (torch.save writes a zip archive; this file has no "
                "readable zip directory)")
    try:
        torch.load(str(path), weights_only=True, map_location="cpu", mmap=True)  # mmap: no tensor data read
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        return (f"refused: it holds Python objects other than tensors{what}, which loading would run as code; "
                "a checkpoint must hold only tensors (safetensors is safest)")
    except Exception as err:  # torch's own error types for a damaged archive
        return f"damaged: {_first_line(err)}"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__
