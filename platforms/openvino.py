"""OpenVINO backend: one compiled IR graph per Session, on cpu, gpu, npu or auto.

- Precision: f32 inference unless asked otherwise. OpenVINO's CPU plugin otherwise computes in bf16
  on CPUs with AMX/avx512_bf16 (0.08 max abs diff on the vision tower, enough to change tokens) and
  the GPU plugin in f16. `inference_precision="bf16"` or `"f16"` opts in, where the device can.
  The NPU computes in f16 whatever the hint: it gets none. A bf16 artifact (`--bf16`) asks for bf16
  with `precision_fallback`: a CPU without bf16 (no AMX/avx512_bf16) then computes in f32, with a
  warning, instead of refusing the artifact.
- Compile cache: compiled graphs are kept in `cache_dir` (default: $FLORENCE2_EDGE_CACHE, else
  $XDG_CACHE_HOME/florence2-edge/openvino, else ~/.cache/florence2-edge/openvino; None disables),
  in a subfolder per device and option set, so a second load imports the compiled blob instead of
  compiling. OpenVINO keys a blob by the graph's path and checks it against the file, so an
  artifact exported again in place is recompiled, not served stale.
- Devices: a device that is not present is an error naming the ones that are, never a fallback.
- Threads: an `InferRequest` runs one inference at a time ("Infer Request is busy", or worse, another
  call's outputs). A session keeps a pool of them: each call takes a free one (a new one when all are
  busy), so concurrent calls on one loaded model run side by side, each with its own buffers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from platforms import PlatformError

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}
# Our precision names -> OpenVINO's, and the OPTIMIZATION_CAPABILITIES entry a device must list.
PRECISIONS = {"f32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "f16": ("f16", "FP16")}
_ALIASES = {"fp32": "f32", "fp16": "f16"}
DEFAULT = object()  # cache_dir: the user cache folder

_core = None


def _import():
    try:
        import openvino
    except ImportError:
        raise PlatformError("the openvino target needs openvino: pip install 'florence2-edge[openvino]'") from None
    return openvino


def core():
    """One `ov.Core` per process: it loads the device plugins once for every graph."""
    global _core
    if _core is None:
        _core = _import().Core()
    return _core


def default_cache_dir() -> Path:
    if os.environ.get("FLORENCE2_EDGE_CACHE"):
        return Path(os.environ["FLORENCE2_EDGE_CACHE"]) / "openvino"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "florence2-edge" / "openvino"


def check_device(device: str) -> str:
    """The OpenVINO device name for one of ours; PlatformError if unknown or not present here."""
    if device not in DEVICES:
        raise PlatformError(f"unknown device {device!r} for openvino; expected one of {', '.join(DEVICES)}")
    name = DEVICES[device]
    present = core().available_devices  # e.g. ["CPU", "GPU.0", "GPU.1", "NPU"]
    if name != "AUTO" and not any(d == name or d.startswith(name + ".") for d in present):
        raise PlatformError(f"device {device!r} is not available to OpenVINO on this machine; present: {', '.join(present)}")
    return name


def compile_config(name: str, inference_precision: str | None, cache_dir, threads: int | None,
                   precision_fallback: bool = False) -> dict:
    """The compile options for device `name`; PlatformError for a precision the device cannot run
    (with `precision_fallback`, a warning and f32 instead)."""
    config = {}
    precision = _ALIASES.get(inference_precision, inference_precision or "f32")
    if precision not in PRECISIONS:
        raise PlatformError(f"unknown inference_precision {inference_precision!r}; expected one of {', '.join(PRECISIONS)}")
    hint, capability = PRECISIONS[precision]
    if name == "NPU":
        if inference_precision is not None and precision != "f16" and not precision_fallback:
            raise PlatformError(f"the NPU computes in f16; inference_precision {inference_precision!r} is not available there")
    elif name == "AUTO":
        config["INFERENCE_PRECISION_HINT"] = hint  # passed on to the device AUTO picks
    else:
        capabilities = core().get_property(name, "OPTIMIZATION_CAPABILITIES")
        if capability not in capabilities and precision_fallback:
            warnings.warn(f"{name} cannot compute in {precision} here (it supports {', '.join(capabilities)}): "
                          "running in f32", stacklevel=3)
            hint = "f32"
        elif capability not in capabilities:
            raise PlatformError(f"{name} cannot compute in {precision} here (it supports {', '.join(capabilities)})")
        config["INFERENCE_PRECISION_HINT"] = hint
    if name == "CPU":
        # OpenVINO 2026.4's CPU snippets (fused attention/eltwise kernels for dynamic shapes) compute
        # wrong results (logits off by ~100) for every self-attention cache of 15+ rows once the
        # compiled decoder has run the empty cache of a first step. Without them: exact again, the
        # decoder step as fast, the vision tower the same, the int8 encoder ~10% slower (measured).
        config["SNIPPETS_MODE"] = "DISABLE"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is DEFAULT:
        cache_dir = default_cache_dir()
    if cache_dir:
        # OpenVINO keys a cached blob by the graph and some of the options, not all (SNIPPETS_MODE
        # is not one): a subfolder per option set, so a changed option never gets a stale blob.
        tag = hashlib.sha256(json.dumps(sorted(config.items())).encode()).hexdigest()[:12]
        folder = Path(cache_dir) / f"{name.lower()}-{tag}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(folder)
        except OSError as err:  # a read-only home: slower loads, not a failure
            warnings.warn(f"no OpenVINO compile cache ({err}); every load compiles", stacklevel=3)
    return config


class OpenVINOSession:
    def __init__(self, path: Path, device: str = "cpu", inference_precision: str | None = None,
                 cache_dir=DEFAULT, threads: int | None = None, precision_fallback: bool = False):
        name = check_device(device)
        config = compile_config(name, inference_precision, cache_dir, threads, precision_fallback)
        _check_ir(path)
        try:
            # From the path, not a read ov.Model: with a cache, a second load skips reading the IR.
            self._compiled = core().compile_model(str(path), name, config)
        except RuntimeError as err:  # OpenVINO's one exception type, a C++ trace of several lines
            raise PlatformError(f"{path.name}: OpenVINO cannot load this graph: {message(err)}") from None
        self._idle = [self._compiled.create_infer_request()]  # requests no call is using
        self._lock = threading.Lock()
        self.path = path
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self.output_names = [port.get_any_name() for port in self._compiled.outputs]
        self._fixed = {port.get_any_name(): tuple(port.get_partial_shape().to_shape())
                       for port in self._compiled.inputs if port.get_partial_shape().is_static}
        in_use = [d.split(".")[0].lower() for d in self._compiled.get_property("EXECUTION_DEVICES")]
        self.device = in_use[0] if len(set(in_use)) == 1 else ",".join(in_use)
        if device not in ("cpu", "auto") and "cpu" in in_use:
            warnings.warn(f"{path.name}: asked for {device} but OpenVINO runs it on {self.device}", stacklevel=2)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        for name, shape in self._fixed.items():
            if name in feeds and feeds[name].shape != shape:
                raise PlatformError(f"{self.path.name}: expected shape {shape}, got {feeds[name].shape} for input {name}")
        request = self._take()
        try:
            # share_inputs: OpenVINO reads the caller's arrays in place (the static decoder's KV buffers
            # are megabytes per step); outputs are copied, since the request's next run overwrites its own.
            result = request.infer(feeds, share_inputs=True)
            by_name = {port.get_any_name(): value for port, value in result.items()}
        except RuntimeError as err:
            raise PlatformError(f"{self.path.name}: {message(err)}") from None
        finally:
            with self._lock:
                self._idle.append(request)
        return {name: by_name[name] for name in outputs or self.output_names}

    def _take(self):
        """A request no other call is using: a pooled one, or a new one (the pool grows to the
        highest number of concurrent calls; a request is small beside the compiled graph)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._compiled.create_infer_request()


def _check_ir(path: Path) -> None:
    """An .xml that is no IR would be offered to every frontend OpenVINO has (each logging its own
    parse errors to stderr): refused first, in one line."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise PlatformError(f"{path.name}: cannot read the graph: {err.strerror}") from None
    if b"<net" not in head:
        raise PlatformError(f"{path.name}: not an OpenVINO IR graph (expected the XML of a <net>)")


def message(err: BaseException) -> str:
    """The line of an OpenVINO error that says what is wrong, not where in its C++ sources."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(err).__name__])[0]


def open_session(path: Path, device: str = "cpu", **options) -> OpenVINOSession:
    return OpenVINOSession(path, device=device, **options)
