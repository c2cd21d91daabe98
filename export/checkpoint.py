"""Find and load a Florence-2 checkpoint (a folder or a hub id), in the transformers-native layout or
the original Microsoft one (see original_layout.py; its remote code is never downloaded nor run).

Everything the artifact needs comes out of here as one `Checkpoint`: the model (fp32, eval, eager
attention so every backend sees plain MatMul/Softmax), the processor (tokenizer, image settings,
post-processing settings) and the generation defaults. Layout problems are reported as one line
naming what was expected, before any heavy work starts.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError

log = logging.getLogger("export")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json",)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Everything but code: the original layout ships .py files that must never reach this machine.
_HUB_FILES = ["*.json", "*.txt"]
_HUB_WEIGHTS = (["model*.safetensors"], ["pytorch_model*.bin"])  # the second only when the first is absent


@dataclass
class Checkpoint:
    model: object  # Florence2ForConditionalGeneration
    processor: object  # Florence2Processor
    generation_config: object
    source: str  # what the user gave: a path or a hub id
    mapping: Any = None  # original layout only: the KeyMapping report (renamed / dropped / created keys)


def check_folder(folder: Path) -> None:
    """Refuse, with one line, a folder that is not a native Florence-2 checkpoint (the original layout
    is recognised before this check, by `is_original_layout`)."""
    if not folder.is_dir():
        raise ExportError(f"--model {folder}: not a folder (expected a Florence-2 checkpoint folder or a hub id like florence-community/Florence-2-base)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder} is not a Florence-2 checkpoint: expected config.json in it")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ExportError(f"{config_path} is not valid JSON: {err}") from None
    model_type = config.get("model_type")
    if model_type != "florence2":
        raise ExportError(f"{folder} is not a Florence-2 checkpoint: config.json has model_type {model_type!r}, expected 'florence2'")
    for kind, names in (("weights", WEIGHT_FILES), ("tokenizer", TOKENIZER_FILES), ("processor", PROCESSOR_FILES)):
        if not any((folder / name).is_file() for name in names):
            raise ExportError(f"{folder} has no {kind} file: expected one of {', '.join(names)}")


def load_checkpoint(source: str) -> Checkpoint:
    """Load a local folder or a hub id (its files but code downloaded to the hub cache as usual), in
    either layout; the folder is checked before any heavy work."""
    from .original_layout import is_original_layout, load_original

    path = Path(source).expanduser()
    local = path.exists() or not _HUB_ID.match(source)
    if local and not is_original_layout(path):
        check_folder(path)
    log.info("loading %s", source)
    try:
        folder = path.resolve() if local else _download(source)
        if is_original_layout(folder):
            checkpoint = load_original(folder)
            log.info("%s", checkpoint.mapping.summary())
        else:
            if not local:
                check_folder(folder)
            checkpoint = _load(str(folder))
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"cannot load Florence-2 checkpoint {source}: {first_line}") from None
    checkpoint.source = str(folder) if local else source
    return checkpoint


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    for weights in _HUB_WEIGHTS:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES + weights))
        if any(folder.glob(weights[0])):
            break
    return folder


def _load(source: str) -> Checkpoint:
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    processor = AutoProcessor.from_pretrained(source)
    if getattr(processor, "post_processor_config", None) is None:
        log.warning("%s has no post_processor_config: using the settings real Florence-2 checkpoints ship", source)
    return Checkpoint(model=model, processor=processor, generation_config=model.generation_config, source=source)
