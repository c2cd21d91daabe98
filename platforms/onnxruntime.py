"""onnxruntime backend: CPU (and any execution provider the installed build offers)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from platforms import BackendError

# Our device names -> onnxruntime execution providers, in preference order.
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"],
    "npu": ["QNNExecutionProvider", "OpenVINOExecutionProvider"],
}


def _import():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("the onnx target needs onnxruntime: pip install 'florence2-edge[onnx]'") from None
    return onnxruntime


class OnnxSession:
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        ort = _import()
        if device not in _PROVIDERS and device != "auto":
            raise BackendError(f"unknown device {device!r} for onnxruntime; expected one of cpu, gpu, npu, auto")
        available = ort.get_available_providers()
        wanted = [p for p in _PROVIDERS.get(device, []) if p in available]
        if device == "auto":
            wanted = [p for p in available if p != "CPUExecutionProvider"][:1]
        elif not wanted:
            raise BackendError(
                f"device {device!r} is not available in this onnxruntime build; available providers: {', '.join(available)}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=list(dict.fromkeys(wanted + ["CPUExecutionProvider"])))
        # Hand the arena's free chunks back after every run: otherwise the vision tower's activations
        # (~0.5 GB at base size) stay resident through the whole decode and each graph's arena adds to
        # the peak. Measured: no cost on a decoder step, whose arena use is small.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        in_use = self._session.get_providers()[0]
        self.device = "cpu" if in_use == "CPUExecutionProvider" else device
        if device not in ("cpu", "auto") and in_use == "CPUExecutionProvider":
            # An accelerator that silently falls back to CPU makes every speed claim wrong: say so.
            warnings.warn(f"{path.name}: asked for {device} but onnxruntime runs it on CPU", stacklevel=2)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        return dict(zip(names, self._session.run(names, feeds, self._run_options)))


def open_session(path: Path, device: str = "cpu", **options) -> OnnxSession:
    return OnnxSession(path, device=device, **options)
