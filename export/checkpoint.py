"""A loaded Florence-2 checkpoint, and the transformers-native layout's check and loader
(export/loading.py picks the layout; export/original_layout.py loads the original Microsoft one).

Everything the artifact needs comes out as one `Checkpoint`: the model (fp32, eval, eager
attention so every backend sees plain MatMul/Softmax), the processor (tokenizer, image settings,
post-processing settings) and the generation defaults. Layout problems are reported as one line
naming what was expected, before any heavy work starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError

log = logging.getLogger("export")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json",)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


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
        what = "a file, not a folder" if folder.is_file() else "not a folder (no such path)"
        raise ExportError(f"--model {folder}: {what}; expected a Florence-2 checkpoint folder or a hub id like "
                          "florence-community/Florence-2-base")
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


def load_native(source: str) -> Checkpoint:
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    processor = AutoProcessor.from_pretrained(source)
    if getattr(processor, "post_processor_config", None) is None:
        log.warning("%s has no post_processor_config: using the settings real Florence-2 checkpoints ship", source)
    return Checkpoint(model=model, processor=processor, generation_config=model.generation_config, source=source)
