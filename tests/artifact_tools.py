"""Helpers the fault and kill suites share: tamper with a copy of an artifact as a user (or a broken
tool) would, and look at an artifact folder the way the runtime does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def copy_artifact(artifact: Path, folder: Path) -> Path:
    return Path(shutil.copytree(artifact, folder))


def edit_manifest(folder: Path, change) -> None:
    """`change(data) -> data` applied to manifest.json, then its checksum recomputed as the exporter
    would (without the schema check `seal` does): what is tested is then the edited field itself."""
    from runtime.manifest import body_checksum

    path = folder / "manifest.json"
    data = change(json.loads(path.read_text()))
    if isinstance(data, dict) and "checksum" in data:
        data["checksum"] = body_checksum(data)
    path.write_text(json.dumps(data))


def rehash(folder: Path) -> None:
    """Record every file's current sha256 and size in the manifest and re-seal it: the artifact then
    passes verification with whatever a test put in its files (NaN weights, a foreign graph)."""
    from runtime.manifest import sha256_of

    def change(data):
        records = [(folder / g["file"], g) for g in data["graphs"].values()]
        records += [(folder / g["weights"]["file"], g["weights"]) for g in data["graphs"].values() if g.get("weights")]
        records += [(folder / name, record) for name, record in data["files"].items()]
        for path, record in records:
            record["sha256"], record["bytes"] = sha256_of(path), path.stat().st_size
        return data

    edit_manifest(folder, change)


def poison_onnx(folder: Path, graph: str) -> int:
    """Every float weight of `graph`.onnx set to NaN, hashes re-recorded; returns how many tensors."""
    import onnx
    from onnx import numpy_helper

    path = folder / f"{graph}.onnx"
    model = onnx.load(str(path))
    count = 0
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 1:
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), tensor.name))
            count += 1
    onnx.save(model, str(path))
    rehash(folder)
    return count


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `folder` (to prove nothing was touched)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def whole_artifact(folder: Path) -> bool:
    """`folder` loads with every checksum verified, and holds nothing its manifest does not list."""
    from export.destination import artifact_problem
    from runtime.manifest import read_manifest

    read_manifest(folder, verify=True)
    return artifact_problem(folder, complete=True) is None
