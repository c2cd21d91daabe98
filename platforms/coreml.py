"""CoreML backend: one `coremltools.models.MLModel` (.mlpackage) per Session, on macOS 14+.

Devices map to CoreML compute units; CoreML decides per op where it runs within them:
    cpu -> CPU_ONLY    gpu -> CPU_AND_GPU    ane / npu -> CPU_AND_NE    all / auto -> ALL
After loading, the compute plan (macOS 14.4+, coremltools 8+) says where each op would really run:
asking for the Neural Engine or the GPU and getting none of the program's ops there is a warning,
not a silent CPU run.

Every CoreML artifact is fixed-shape (export/coreml_writer.py): inputs are checked against the
shapes the model declares, cast to its dtypes (ids int64 -> int32), and our names (`past.0.key`)
are translated to CoreML's (`past_0_key`) through the package metadata the exporter writes.
Elsewhere than macOS, opening a session is a one-line `PlatformError`: CoreML prediction needs the
Core ML framework.
"""

from __future__ import annotations

import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

from platforms import PlatformError

COMPUTE_UNITS = {"cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE", "npu": "CPU_AND_NE",
                 "all": "ALL", "auto": "ALL"}
NAMES_KEY = "florence2_edge.names"  # written by export/coreml_writer.py: {CoreML name: our name}
MIN_MACOS = (14, 0)
_ARRAY_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64, "INT32": np.int32}


def check_platform() -> None:
    """PlatformError unless this is macOS 14 or later."""
    if sys.platform != "darwin":
        raise PlatformError(f"CoreML prediction needs macOS 14+; this is {platform.system() or sys.platform}")
    release = tuple(int(part) for part in (platform.mac_ver()[0] or "0").split(".")[:2])
    if release < MIN_MACOS:
        raise PlatformError(f"CoreML prediction needs macOS 14+ for these ML Programs; this is macOS {platform.mac_ver()[0]}")


def _import():
    try:
        import coremltools
    except ImportError:
        raise PlatformError("the coreml target needs coremltools: pip install 'florence2-edge[coreml]'") from None
    return coremltools


class CoreMLSession:
    def __init__(self, path: Path, device: str = "cpu"):
        if device not in COMPUTE_UNITS:
            raise PlatformError(f"unknown device {device!r} for coreml; expected one of {', '.join(COMPUTE_UNITS)}")
        check_platform()
        ct = _import()
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[device])
        self.path = Path(path)
        self._model = ct.models.MLModel(str(path), compute_units=units)
        description = self._model.get_spec().description
        ours = json.loads(description.metadata.userDefined.get(NAMES_KEY, "{}"))
        array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
        # our name -> (CoreML name, shape, dtype)
        self._inputs = {ours.get(f.name, f.name): (f.name, tuple(f.type.multiArrayType.shape),
                                                   _ARRAY_DTYPES[array_type.Name(f.type.multiArrayType.dataType)])
                        for f in description.input}
        self._outputs = {ours.get(f.name, f.name): f.name for f in description.output}
        self.input_names, self.output_names = list(self._inputs), list(self._outputs)
        self.device = device
        placed = _compute_devices(ct, self._model, units)
        if device in ("ane", "npu", "gpu") and placed is not None:
            wanted = "neural_engine" if device in ("ane", "npu") else "gpu"
            if wanted not in placed:
                self.device = "cpu"
                warnings.warn(f"{self.path.name}: asked for {device} but CoreML plans every op on {', '.join(sorted(placed))}",
                              stacklevel=2)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        inputs = {}
        for name, (coreml_name, shape, dtype) in self._inputs.items():
            if name not in feeds:
                raise PlatformError(f"{self.path.name}: missing input {name}")
            value = feeds[name]
            if value.shape != shape:
                raise PlatformError(f"{self.path.name}: expected shape {shape}, got {value.shape} for input {name}")
            inputs[coreml_name] = np.ascontiguousarray(value, dtype=dtype)
        result = self._model.predict(inputs)
        return {name: np.asarray(result[self._outputs[name]], dtype=np.float32) for name in outputs or self.output_names}


def _compute_devices(ct, model, units) -> set[str] | None:
    """The compute devices CoreML's plan prefers for the program's ops ({"cpu", "gpu", "neural_engine"}),
    or None where the plan cannot be read (coremltools < 8, macOS < 14.4)."""
    try:
        from coremltools.models.compute_plan import MLComputePlan
    except ImportError:
        return None
    compiled = model.get_compiled_model_path()
    try:
        plan = MLComputePlan.load_from_path(path=compiled, compute_units=units)
    except (RuntimeError, ValueError, AttributeError):  # the framework is older than the plan API
        return None
    program = plan.model_structure.program
    if program is None:
        return None
    kinds = set()
    for function in program.functions.values():
        for operation in function.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            if usage is not None:
                kinds.add(_device_kind(usage.preferred_compute_device))
    return kinds or None


def _device_kind(device) -> str:
    name = type(device).__name__
    return {"MLCPUComputeDevice": "cpu", "MLGPUComputeDevice": "gpu", "MLNeuralEngineComputeDevice": "neural_engine"}.get(name, name)


def open_session(path: Path, device: str = "cpu", **options) -> CoreMLSession:
    if options:
        raise PlatformError(f"the coreml backend takes no options; got {', '.join(options)}")
    return CoreMLSession(path, device=device)
