"""The artifact manifest: the one schema both sides share (export writes it, the runtime reads it).

An artifact folder holds `manifest.json`, `tokenizer.json` and the graph files. The manifest is a
frozen `Manifest` serialized as JSON; `read_manifest` rebuilds it field by field (runtime/schema.py),
so a malformed one fails at load with one line naming the field, never later inside a backend:

    format_version   FORMAT_VERSION; older ones are refused (export again), newer ones too (upgrade)
    target           "onnx" | "openvino" | "coreml";   precision  "fp32" | "fp16" | "bf16" | "int8" | "int4"
                     (bf16: openvino only, fp16 weights computed in bf16: COMPUTE_PRECISIONS)
    source           where the weights came from and with which tools (free-form)
    dims, tokens     the graph contract (runtime/contract.py): widths, image size and tokens, ids
    static           null, or the fixed shapes of a static-shape artifact (a StaticLayout)
    generation       the checkpoint's generation defaults (GenerationDefaults)
    preprocessing    the image processor's settings (runtime/preprocess.py reads them)
    tasks            {token: {"prompt", "parse_type"}}: the task table prompts and parsing both use
    post_processing  the parse settings per parse type (the processor's post_processor_config)
    graphs           {name: GraphRecord}: file, sha256, bytes, I/O {name: {"dtype", "shape"}} as the
                     contract derives it, parity figures, OpenVINO's weights file, other variants
    files            {name: FileRecord}: the tokenizer and files beside the graphs (shared weights)
    mobile           null, or what a native app needs beyond the graphs (`--mobile`, docs/mobile.md):
                     the onnxruntime that wrote each graph's "ort" variant, the reduced-operator config,
                     the id -> token-bytes table and the dataflow between the graphs, stated in words
    conformance      null, or the test-vector file in `files` (`--conformance`, runtime/vectors.py)
    quantization     null, or how an int8/int4 artifact is quantized (QuantizationRecord): "dynamic",
                     "calibrated" or "weight-only", per graph, and the calibration images' source and count
    checksum         sha256 of every other field: an edited manifest is refused at load
                     (`python -m runtime.manifest seal FOLDER` re-seals a deliberate edit)

Other features add optional fields (a default of None) rather than changing these; a runtime that
does not know a field refuses the manifest, naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field, replace
from typing import ClassVar
from functools import cached_property
from pathlib import Path

from .contract import GRAPH_NAMES, Contract, Dims, StaticLayout, TokenIds
from .defaults import default_options, token_rules
from .errors import ArtifactError
from .schema import SchemaError, build, to_json_value

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
TARGETS = ("onnx", "openvino", "coreml")
# Artifact precisions that are the backend's compute precision rather than a storage format: the runtime
# (and the export's parity gate) compile the graphs with this inference precision, where the device has it.
COMPUTE_PRECISIONS = {"bf16": "bf16"}
QUANTIZATION_METHODS = ("dynamic", "calibrated", "weight-only")
CALIBRATION_SOURCES = ("builtin", "dir")
__all__ = ["GRAPH_NAMES", "FORMAT_VERSION", "Manifest", "read_manifest", "file_record", "sha256_of"]


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str | None = None  # None for a folder (a CoreML .mlpackage): its files are hashed instead
    files: dict[str, FileRecord] | None = None


@dataclass(frozen=True)
class FileRef:
    """A named file of a graph: OpenVINO's weights, or another form of the same graph."""

    file: str
    bytes: int
    sha256: str | None = None
    files: dict[str, FileRecord] | None = None
    parity: dict | None = None  # an "ort" variant: its own run of the parity gate


@dataclass(frozen=True)
class TensorRecord:
    dtype: str
    shape: tuple[int | str, ...]
    coreml_name: str | None = None  # CoreML renames `past.0.key` to `past_0_key`


@dataclass(frozen=True)
class GraphRecord:
    file: str
    bytes: int
    inputs: dict[str, TensorRecord]
    outputs: dict[str, TensorRecord]
    parity: dict
    sha256: str | None = None
    files: dict[str, FileRecord] | None = None
    weights: FileRef | None = None
    variants: dict[str, FileRef] = field(default_factory=dict)  # e.g. {"ort": ...}: the same graph, other format


@dataclass(frozen=True)
class GenerationDefaults:
    """The checkpoint's generation config, as transformers names it (null: not set)."""

    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | str | None = None
    length_penalty: float | None = None
    max_length: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None


@dataclass(frozen=True)
class TaskRecord:
    prompt: str  # "{input}" marks where a task's text goes
    parse_type: str
    # A task without text: its prompt's ids exactly ([bos] + BPE + [eos]), so an app needs no tokenizer.
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MobileRecord:
    """What a native app needs beyond the graphs (python -m export --mobile; docs/mobile.md)."""

    ort_version: str  # the onnxruntime that wrote the .ort variants: run them with this version or newer
    ort_optimization: str  # how they were optimized before saving (baked into the files)
    operators_config: str  # in `files`: the operators a minimal ORT build must include (--include_ops_by_config)
    token_bytes: str  # in `files`: id -> the bytes of its token, to turn ids into text without a tokenizer
    dataflow: dict[str, str]  # graph input (or rule) -> where its value comes from, in words (Contract.dataflow)


@dataclass(frozen=True)
class QuantizationRecord:
    """How an int8/int4 artifact was quantized (python -m export --int8 [--calibration DIR|builtin])."""

    method: str  # QUANTIZATION_METHODS: the artifact's, "calibrated" if any graph is
    graphs: dict[str, str]  # graph -> its method (a calibrated export keeps the decoder dynamic)
    calibration: str | None = None  # CALIBRATION_SOURCES, for "calibrated"
    count: int | None = None  # calibration images


@dataclass(frozen=True)
class Manifest:
    target: str
    precision: str
    source: dict
    dims: Dims
    tokens: TokenIds
    generation: GenerationDefaults
    preprocessing: dict
    tasks: dict[str, TaskRecord]
    post_processing: dict
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    static: StaticLayout | None = None
    mobile: MobileRecord | None = None
    conformance: str | None = None  # the test-vector file, in `files`
    quantization: QuantizationRecord | None = None  # absent in fp32/fp16/bf16 artifacts and older manifests
    format_version: int = FORMAT_VERSION
    checksum: str | None = None
    _explicit_nulls: ClassVar[tuple[str, ...]] = ("static",)  # "static": null says "dynamic shapes"

    @cached_property
    def contract(self) -> Contract:
        return Contract(self.dims, self.tokens, self.static)

    def graph_path(self, folder: str | Path, name: str) -> Path:
        return Path(folder) / self.graphs[name].file

    def to_dict(self) -> dict:
        return to_json_value(self)

    def sealed(self) -> Manifest:
        """A copy whose checksum covers its other fields."""
        return replace(self, checksum=body_checksum(self.to_dict()))

    def write(self, folder: str | Path) -> Path:
        """Seal and write manifest.json: a temporary file, flushed to disk, renamed into place."""
        path = Path(folder) / MANIFEST_NAME
        text = json.dumps(self.sealed().to_dict(), indent=2) + "\n"
        write_durably(path, text.encode("utf-8"))
        return path


def write_durably(path: Path, data: bytes) -> None:
    """`data` at `path`, never half-written: a sibling temporary file, fsync, rename, fsync the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def body_checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A .mlpackage's own index: coremltools rewrites it whenever it opens the package (even to read
# it), so it is not hashed; the model spec and weights it indexes are.
_REWRITTEN_ON_OPEN = {"Manifest.json"}


def file_record(path: str | Path) -> FileRecord:
    """sha256 and size of a file; of a folder graph (a CoreML .mlpackage), the total size and a
    record per file in it but its index."""
    path = Path(path)
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): file_record(p) for p in sorted(path.rglob("*"))
                 if p.is_file() and p.relative_to(path).as_posix() not in _REWRITTEN_ON_OPEN}
        return FileRecord(bytes=sum(r.bytes for r in files.values()), files=files)
    return FileRecord(bytes=path.stat().st_size, sha256=sha256_of(path))


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """Load and check an artifact's manifest. With `verify`, the manifest's checksum must match and
    every listed file must exist and match its sha256 (a truncated copy, a swapped graph or an edited
    setting fails here, not as garbage output later)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if folder.is_file():
        raise ArtifactError(f"{folder} is a file; expected an artifact folder (the one that holds {MANIFEST_NAME})")
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}")
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a florence2-edge artifact: expected {MANIFEST_NAME} in it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    _check_version(data, path)
    try:
        manifest = build(Manifest, data, "manifest")
    except SchemaError as err:
        raise ArtifactError(f"{path} does not match the manifest schema: {err}") from None
    if verify and manifest.checksum != body_checksum(data):
        raise ArtifactError(f"{path} was changed after export (its checksum does not match): export again, or, "
                            f"if the edit was deliberate, re-seal it with `python -m runtime.manifest seal {folder}`")
    check_manifest(manifest, path)
    if verify:
        verify_files(folder, manifest)
    return manifest


def _check_version(data, path: Path) -> None:
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not match the manifest schema: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path} has no valid format_version (a positive integer); got {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version}, this runtime reads {FORMAT_VERSION}: upgrade florence2-edge")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version}, written by an older florence2-edge; this runtime "
                            f"reads {FORMAT_VERSION}: export the model again")


def listed_files(manifest: Manifest) -> dict[str, FileRecord | GraphRecord | FileRef]:
    """Every file the manifest records, by its path in the artifact folder (folder graphs expanded)."""
    records: dict = {g.file: g for g in manifest.graphs.values()}
    for graph in manifest.graphs.values():
        if graph.weights is not None:
            records[graph.weights.file] = graph.weights
        records.update({ref.file: ref for ref in graph.variants.values()})
    records.update(manifest.files)
    expanded = {}
    for name, record in records.items():
        if record.files is not None:  # a folder: each file in it is checked like a graph file
            expanded.update({f"{name}/{inner}": r for inner, r in record.files.items()})
        else:
            expanded[name] = record
    return expanded


def verify_files(folder: Path, manifest: Manifest) -> None:
    for name, record in listed_files(manifest).items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact {folder} is missing {name}")
        if path.stat().st_size != record.bytes or sha256_of(path) != record.sha256:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest: the artifact is damaged; export it again")


def check_manifest(manifest: Manifest, path: Path) -> None:
    """The facts the schema's types cannot express: known target, parse types and preprocessing, ids
    inside the vocabulary, graphs whose I/O is what the contract derives from the dims. ArtifactError
    naming the first field that is wrong."""
    problem = _first_problem(manifest)
    if problem:
        raise ArtifactError(f"{path}: {problem}")


def _first_problem(m: Manifest) -> str | None:
    from .postprocess import PARSERS
    from .preprocess import Preprocessor

    if m.target not in TARGETS:
        return f"target: expected one of {', '.join(TARGETS)}, got {m.target!r}"
    dims = m.dims
    sizes = {k: v for k, v in vars(dims).items() if k != "image_size"}
    bad = [k for k, v in sizes.items() if v < 1] + (["image_size"] if min(dims.image_size) < 1 else [])
    if bad:
        return f"dims.{bad[0]}: expected a positive size, got {getattr(dims, bad[0])!r}"
    if dims.tokenizer_size > dims.vocab_size:
        return f"dims.tokenizer_size: {dims.tokenizer_size} is more than the {dims.vocab_size} embedding rows"
    for name, value in vars(m.tokens).items():
        if not 0 <= value < dims.tokenizer_size:
            return f"tokens.{name}: expected an id below tokenizer_size {dims.tokenizer_size}, got {value}"
    try:
        preprocessor = Preprocessor.from_config(m.preprocessing)
    except ArtifactError as err:
        return f"preprocessing: {err}"
    if (preprocessor.height, preprocessor.width) != tuple(dims.image_size):
        return (f"preprocessing.size {preprocessor.height}x{preprocessor.width} differs from dims.image_size "
                f"{dims.image_size[0]}x{dims.image_size[1]}")
    for token, task in m.tasks.items():
        if task.parse_type not in PARSERS:
            return f"tasks.{token}.parse_type: expected one of {', '.join(PARSERS)}, got {task.parse_type!r}"
        if task.parse_type not in m.post_processing:
            return f"post_processing: no settings for parse type {task.parse_type!r} (task {token})"
    if m.static is not None and m.static.problems(dims):
        return f"static: {m.static.problems(dims)[0]}"
    problem = _mobile_problem(m) or _quantization_problem(m)
    if problem:
        return problem
    try:
        token_rules(m), default_options(m)
    except ArtifactError as err:
        return str(err).removeprefix("manifest ")
    return _graph_problem(m)


def _mobile_problem(m: Manifest) -> str | None:
    """Prompt ids only for tasks without text, inside the vocabulary; files named by `mobile` and
    `conformance` listed in `files`; a mobile artifact has an "ort" variant of every graph."""
    for token, task in m.tasks.items():
        if task.prompt_ids is None:
            continue
        if "{input}" in task.prompt:
            return f"tasks.{token}.prompt_ids: a task that takes text has no fixed prompt ids"
        if not task.prompt_ids or not all(0 <= i < m.dims.tokenizer_size for i in task.prompt_ids):
            return f"tasks.{token}.prompt_ids: expected ids below tokenizer_size {m.dims.tokenizer_size}"
    named = {"conformance": m.conformance}
    if m.mobile is not None:
        named.update({"mobile.operators_config": m.mobile.operators_config, "mobile.token_bytes": m.mobile.token_bytes})
        missing = [name for name, graph in m.graphs.items() if "ort" not in graph.variants]
        if missing:
            return f"graphs.{missing[0]}.variants: a mobile artifact needs an \"ort\" variant of every graph"
    for where, name in named.items():
        if name is not None and name not in m.files:
            return f"{where}: {name!r} is not listed in files"
    return None


def _quantization_problem(m: Manifest) -> str | None:
    q = m.quantization
    if q is None:
        return None
    for where, method in (("method", q.method), *((f"graphs.{g}", v) for g, v in q.graphs.items())):
        if method not in QUANTIZATION_METHODS:
            return f"quantization.{where}: expected one of {', '.join(QUANTIZATION_METHODS)}, got {method!r}"
    unknown = sorted(set(q.graphs) - set(GRAPH_NAMES))
    if unknown:
        return f"quantization.graphs: unknown graph {unknown[0]!r}"
    if (q.calibration is None) != (q.method != "calibrated"):
        return "quantization.calibration: a calibrated artifact names its calibration source, only it does"
    if q.calibration is not None and q.calibration not in CALIBRATION_SOURCES:
        return f"quantization.calibration: expected one of {', '.join(CALIBRATION_SOURCES)}, got {q.calibration!r}"
    if q.count is not None and q.count < 1:
        return f"quantization.count: expected a positive number of images, got {q.count}"
    return None


def _graph_problem(m: Manifest) -> str | None:
    if sorted(m.graphs) != sorted(GRAPH_NAMES):
        return f"graphs: expected {', '.join(GRAPH_NAMES)}, got {', '.join(m.graphs) or 'none'}"
    for name, io in m.contract.graphs.items():
        record = m.graphs[name]
        for kind, tensors in (("inputs", io.inputs), ("outputs", io.outputs)):
            recorded = getattr(record, kind)
            if list(recorded) != [t.name for t in tensors]:
                return (f"graphs.{name}.{kind}: expected {', '.join(t.name for t in tensors)} for these dims, "
                        f"got {', '.join(recorded)}")
            for tensor in tensors:
                if tuple(recorded[tensor.name].shape) != tensor.shape:
                    return (f"graphs.{name}.{kind}.{tensor.name}.shape: expected {list(tensor.shape)} for these "
                            f"dims, got {list(recorded[tensor.name].shape)}")
    return None


def seal(folder: str | Path) -> Path:
    """Re-seal a deliberately edited manifest: the edit is checked against the schema, then its
    checksum is recomputed. Files are not re-hashed (a changed graph still fails at load)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    _check_version(data, path)
    try:
        manifest = build(Manifest, data, "manifest")
    except SchemaError as err:
        raise ArtifactError(f"{path} does not match the manifest schema: {err}") from None
    check_manifest(manifest, path)
    return manifest.write(folder)


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.manifest seal FOLDER`: re-seal a deliberately edited manifest."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "seal":
        print("usage: python -m runtime.manifest seal ARTIFACT_FOLDER", file=sys.stderr)
        return 2
    try:
        path = seal(argv[1])
    except ArtifactError as err:
        print(f"runtime.manifest: error: {err}", file=sys.stderr)
        return 2
    print(f"sealed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
