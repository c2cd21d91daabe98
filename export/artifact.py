"""Assemble the manifest from a checkpoint, and write the tokenizer into the artifact folder.

The folder itself (staging, the swap into place, what --overwrite may replace) is export/destination.py.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from runtime.contract import Contract
from runtime.manifest import TOKENIZER_NAME, FileRecord, GenerationDefaults, Manifest, TaskRecord, file_record
from runtime.tasks import DEFAULT_POST_PROCESSOR_CONFIG, TASKS, Task, TaskDeclarationError, declare_tasks

from .errors import ExportError

_GENERATION_KEYS = (
    "num_beams", "no_repeat_ngram_size", "early_stopping", "length_penalty", "max_length", "max_new_tokens",
    "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id",
    "bos_token_id", "eos_token_id", "pad_token_id",
)
_PREPROCESSING_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)


def _plain(value):
    """JSON-safe copies of config values (enums such as PIL resample modes become ints)."""
    if dataclasses.is_dataclass(value):  # transformers' SizeDict
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, int):
        return int(value.value)
    return value


def preprocessing_settings(image_processor) -> dict:
    return {key: _plain(getattr(image_processor, key, None)) for key in _PREPROCESSING_KEYS}


def task_table(processor, declared: dict | None = None) -> dict[str, TaskRecord]:
    """The checkpoint's tasks (its processor's prompts and parse types), plus those `declared` with
    `--tasks` (validated by runtime.tasks.declare_tasks: they may not replace the checkpoint's)."""
    parse_types = getattr(processor, "tasks_answer_post_processing_type", None) or {}
    prompts = {**(getattr(processor, "task_prompts_without_inputs", None) or {}),
               **(getattr(processor, "task_prompts_with_input", None) or {})}
    table = {token: Task(token, prompt, parse_types.get(token, "pure_text")) for token, prompt in prompts.items()}
    if not table:
        table = dict(TASKS)
    if declared is not None:
        try:
            table = declare_tasks(table, declared)
        except TaskDeclarationError as err:
            raise ExportError(f"--tasks: {err}") from None
    return {token: TaskRecord(task.prompt, task.parse_type) for token, task in table.items()}


def build_manifest(checkpoint, contract: Contract, target: str, precision: str, source: dict,
                   declared_tasks: dict | None = None) -> Manifest:
    """The manifest of an export, without its graphs and files (the pipeline adds them as it writes)."""
    generation = checkpoint.generation_config
    return Manifest(
        target=target,
        precision=precision,
        source=source,
        dims=contract.dims,
        tokens=contract.tokens,
        static=contract.static,
        generation=GenerationDefaults(**{key: _plain(getattr(generation, key, None)) for key in _GENERATION_KEYS}),
        preprocessing=preprocessing_settings(checkpoint.processor.image_processor),
        tasks=task_table(checkpoint.processor, declared_tasks),
        post_processing=_plain(getattr(checkpoint.processor, "post_processor_config", None) or DEFAULT_POST_PROCESSOR_CONFIG),
    )


def write_tokenizer(processor, folder: Path) -> dict[str, FileRecord]:
    """tokenizer.json with every added token, so the runtime needs only the `tokenizers` package."""
    path = folder / TOKENIZER_NAME
    processor.tokenizer.backend_tokenizer.save(str(path))
    return {TOKENIZER_NAME: file_record(path)}


def source_record(checkpoint) -> dict:
    import torch
    import transformers

    from . import __version__

    return {
        "model": checkpoint.source,
        "layout": "original" if checkpoint.mapping is not None else "native",
        **({"key_mapping": checkpoint.mapping.summary()} if checkpoint.mapping is not None else {}),
        "exporter": f"florence2-edge {__version__}",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
