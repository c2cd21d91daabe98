"""Find and load a Florence-2 checkpoint (a folder or a hub id), in the transformers-native layout or
the original Microsoft one (export/original_layout.py; its remote code is never downloaded nor run).
Layout problems are reported as one line naming what was expected, before any heavy work starts.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

from .checkpoint import Checkpoint, check_folder, load_native
from .errors import ExportError
from .original_layout import is_original_layout, load_original
from .weights import check_weights

log = logging.getLogger("export")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Everything but code: the original layout ships .py files that must never reach this machine.
_HUB_FILES = ["*.json", "*.txt"]
_HUB_WEIGHTS = (["model*.safetensors"], ["pytorch_model*.bin"])  # the second only when the first is absent


def load_checkpoint(source: str) -> Checkpoint:
    """Load a local folder or a hub id (its files but code downloaded to the hub cache as usual), in
    either layout; the folder is checked before any heavy work."""
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
            check_weights(folder)  # a damaged file: one line naming it, before transformers reads it
            checkpoint = load_native(str(folder))
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # what loaders raise
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


