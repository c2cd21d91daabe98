"""Backend adapters behind one small Session protocol.

A `Session` runs one graph file: `session.run({name: array}) -> {name: array}`. Each backend lives in
its own module and is imported only when asked for, so the runtime needs exactly one of them installed.
This package is the bottom layer: it imports nothing of the runtime or the exporter (they import it),
and reports what it cannot do as `PlatformError`, which the runtime turns into its own BackendError.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

# target -> (module, pip extra that installs its backend)
BACKENDS = {
    "onnx": ("platforms.onnxruntime", "onnx"),
    "openvino": ("platforms.openvino", "openvino"),
    "coreml": ("platforms.coreml", "coreml"),
}


class PlatformError(Exception):
    """The backend for a target is missing, cannot use the requested device, or refuses an input.
    The message is one line that says what was expected."""


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]
    device: str  # the device really in use, after any fallback

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...


def open_session(target: str, path: str | Path, device: str = "cpu", **options) -> Session:
    """Open one graph file of an artifact of `target` on `device`."""
    if target not in BACKENDS:
        raise PlatformError(f"no runtime backend for target {target!r}; available: {', '.join(BACKENDS)}")
    module_name, extra = BACKENDS[target]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise PlatformError(f"this florence2-edge has no {target} backend yet") from None
        raise PlatformError(f"the {target} backend needs {err.name}: pip install 'florence2-edge[{extra}]'") from None
    return module.open_session(Path(path), device=device, **options)
