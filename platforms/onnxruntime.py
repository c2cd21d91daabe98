"""onnxruntime backend: CPU, and the execution providers the installed build offers for gpu and npu.

An accelerator is configured and verified, never assumed: `npu` asks the NPU providers for their NPU
(`device_type` "NPU" for OpenVINO's provider, the HTP backend for QNN) and forbids onnxruntime's
silent per-node fallback to the CPU provider, so a graph the NPU cannot run fully is a one-line
error, not a CPU run under an NPU label. `gpu` keeps the fallback (GPU providers leave shape ops on
the CPU by design) and warns when the CPU provider is the one in use.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from platforms import PlatformError

DEVICES = ("cpu", "gpu", "npu", "auto")
_GPU = ["CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"]
_QNN_BACKEND = "QnnHtp.dll" if sys.platform == "win32" else "libQnnHtp.so"
# Provider -> options that select its NPU.
_NPU = {"QNNExecutionProvider": {"backend_path": _QNN_BACKEND}, "OpenVINOExecutionProvider": {"device_type": "NPU"}}
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderPlan:
    """What to ask onnxruntime for: providers in order, their options, and session config entries."""

    providers: list[str]
    options: list[dict] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)
    strict: bool = False  # the first provider must run every node: no CPU fallback


def provider_plan(device: str, available: list[str]) -> ProviderPlan:
    """The plan for `device` given the providers this onnxruntime build has; PlatformError if none fits."""
    if device not in DEVICES:
        raise PlatformError(f"unknown device {device!r} for onnxruntime; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ProviderPlan([CPU], [{}])
    if device == "auto":
        accelerators = [p for p in available if p != CPU][:1]
        return ProviderPlan(accelerators + [CPU], [{} for _ in accelerators] + [{}])
    wanted = [p for p in (_GPU if device == "gpu" else list(_NPU)) if p in available]
    if not wanted:
        raise PlatformError(f"device {device!r} is not available in this onnxruntime build; available providers: "
                            f"{', '.join(available)}" + (" (an NPU needs onnxruntime-qnn or onnxruntime-openvino)"
                                                         if device == "npu" else ""))
    if device == "gpu":
        return ProviderPlan([wanted[0], CPU], [{}, {}])
    # Only the first NPU provider, and no fallback: a node it cannot take fails the session here.
    return ProviderPlan([wanted[0]], [dict(_NPU[wanted[0]])], {"session.disable_cpu_ep_fallback": "1"}, strict=True)


def _import():
    try:
        import onnxruntime
    except ImportError:
        raise PlatformError("the onnx target needs onnxruntime: pip install 'florence2-edge[onnx]'") from None
    return onnxruntime


class OnnxSession:
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        ort = _import()
        plan = provider_plan(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for key, value in plan.config.items():
            options.add_session_config_entry(key, value)
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=plan.providers,
                                                 provider_options=plan.options)
        except Exception as err:  # onnxruntime's own exception types; one line for the user
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if not plan.strict:  # not a graph this onnxruntime can read (damaged, or from a newer exporter)
                raise PlatformError(f"{path.name}: onnxruntime cannot load this graph: {first}") from None
            raise PlatformError(f"{path.name}: {plan.providers[0]} cannot run this graph on the {device}: {first}") from None
        # Hand the arena's free chunks back after every run: otherwise the vision tower's activations
        # (~0.5 GB at base size) stay resident through the whole decode and each graph's arena adds to
        # the peak. Measured: no cost on a decoder step, whose arena use is small.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        in_use = self._session.get_providers()
        self.device = device if device != "auto" else ("cpu" if in_use[0] == CPU else in_use[0])
        if in_use[0] != plan.providers[0]:
            if plan.strict:
                raise PlatformError(f"{path.name}: asked for {device} through {plan.providers[0]}, "
                                    f"but onnxruntime uses {in_use[0]}")
            self.device = "cpu"
        if device not in ("cpu", "auto") and self.device == "cpu":
            # An accelerator that silently falls back to CPU makes every speed claim wrong: say so.
            warnings.warn(f"{path.name}: asked for {device} but onnxruntime runs it on CPU", stacklevel=2)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        return dict(zip(names, self._session.run(names, feeds, self._run_options)))


def open_session(path: Path, device: str = "cpu", **options) -> OnnxSession:
    return OnnxSession(path, device=device, **options)
