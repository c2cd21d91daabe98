"""The artifact manifest: the one schema both sides share (export writes it, the runtime reads it).

An artifact folder holds `manifest.json`, `tokenizer.json` and one file per graph. The manifest
carries everything the runtime needs, so it never looks at the source checkpoint:

    format_version   int, bumped on any incompatible change; a newer one is refused by older runtimes
    target           "onnx" | "openvino" | "coreml";   precision  "fp32" | "fp16" | "int8" | ...
    source           where the weights came from and with which tools
    dims             d_model, vocab_size (embedding rows), tokenizer_size, encoder/decoder layers,
                     decoder_heads, head_dim, image_tokens, image_size [h, w], max_positions
    tokens           bos, eos, pad, decoder_start, unk, image, first_loc ids
    generation       the checkpoint's generation defaults (num_beams, no_repeat_ngram_size, ...)
    preprocessing    the image processor's settings (size, resample, rescale, mean, std, ...)
    tasks            {token: {"prompt": ..., "parse_type": ...}};  post_processing  parse settings
    graphs           {name: {"file", "sha256", "bytes", "inputs": {name: {"dtype", "shape"}},
                     "outputs": {...}, "parity": {...}}}, plus "weights": {"file", "sha256", "bytes"}
                     where the graph keeps its weights in a second file (OpenVINO's .bin); a folder
                     graph (CoreML's .mlpackage) has "files": {relative path: {"sha256", "bytes"}}
                     instead of "sha256", and "bytes" is their total
    files            {"tokenizer.json": {"sha256", "bytes"}}
    static           null, or the fixed shapes of a static-shape artifact (export/static_graphs.py):
                     {"batch", "beams", "prompt_bucket", "max_decode"}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
GRAPH_NAMES = ("vision_encoder", "embed_tokens", "encoder", "decoder")


@dataclass
class Manifest:
    target: str
    precision: str
    source: dict
    dims: dict
    tokens: dict
    generation: dict
    preprocessing: dict
    tasks: dict
    post_processing: dict
    graphs: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    static: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def graph_path(self, folder: str | Path, name: str) -> Path:
        return Path(folder) / self.graphs[name]["file"]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A .mlpackage's own index: coremltools rewrites it whenever it opens the package (even to read
# it), so it is not hashed; the model spec and weights it indexes are.
_REWRITTEN_ON_OPEN = {"Manifest.json"}


def file_record(path: str | Path) -> dict:
    """{"sha256", "bytes"} of a file; of a folder graph (a CoreML .mlpackage), {"bytes": total,
    "files": {relative path: {"sha256", "bytes"}}} over every file in it but its index."""
    path = Path(path)
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): file_record(p) for p in sorted(path.rglob("*"))
                 if p.is_file() and p.relative_to(path).as_posix() not in _REWRITTEN_ON_OPEN}
        return {"bytes": sum(r["bytes"] for r in files.values()), "files": files}
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """Load and check an artifact's manifest. With `verify`, every listed file must exist and match
    its sha256 (a truncated copy or a swapped graph fails here, not as garbage output later)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}")
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a florence2-edge artifact: expected {MANIFEST_NAME} in it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from None
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has no integer format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version}, this runtime reads up to {FORMAT_VERSION}: upgrade florence2-edge"
        )
    try:
        manifest = Manifest(**data)
    except TypeError as err:
        raise ArtifactError(f"{path} does not match the manifest schema: {err}") from None
    missing = [name for name in GRAPH_NAMES if name not in manifest.graphs]
    if missing:
        raise ArtifactError(f"{path} lists no graph for {', '.join(missing)}")
    if verify:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: Path, manifest: Manifest) -> None:
    records = {g["file"]: g for g in manifest.graphs.values()}
    records.update({g["weights"]["file"]: g["weights"] for g in manifest.graphs.values() if "weights" in g})
    records.update(manifest.files)
    for name, record in list(records.items()):
        if "files" in record:  # a folder graph: each file in it is checked like a graph file
            if not (folder / name).is_dir():
                raise ArtifactError(f"artifact {folder} is missing {name}")
            del records[name]
            records.update({f"{name}/{inner}": r for inner, r in record["files"].items()})
    for name, record in records.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact {folder} is missing {name}")
        if path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest: the artifact is damaged; export it again")
