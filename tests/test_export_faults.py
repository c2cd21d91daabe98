"""`python -m export` given what it must refuse: folders --overwrite may not replace (the source
checkpoint, user files, an artifact with a user's file in it) and damaged checkpoints. Each: exit 2,
one line naming what is wrong, no traceback, and nothing touched. Table-driven: add a row per case.
Run through `export.cli.main` in this process (torch is loaded once); one case also as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from artifact_tools import copy_artifact, snapshot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(variant_checkpoint) -> Path:
    return variant_checkpoint("px128")


@pytest.fixture(scope="module")
def artifact(checkpoint, exported) -> Path:
    return exported(checkpoint, "onnx")


@dataclass
class Setup:
    """What a case made: the arguments, and the folders that must come out byte for byte the same."""

    args: list
    untouched: list[Path]


def _user_files(tmp: Path, ckpt: Path, art: Path) -> Setup:
    folder = tmp / "photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "2024" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    return Setup(["--output", folder, "--overwrite"], [folder])


def _the_checkpoint(tmp: Path, ckpt: Path, art: Path) -> Setup:
    copy = Path(shutil.copytree(ckpt, tmp / "my-finetune"))
    return Setup(["--model", copy, "--output", copy, "--overwrite"], [copy])


def _artifact_plus(*names: str):
    def setup(tmp: Path, ckpt: Path, art: Path) -> Setup:
        folder = copy_artifact(art, tmp / "artifact")
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("a user's file")
        return Setup(["--output", folder, "--overwrite"], [folder])
    return setup


def _foreign_manifest(tmp: Path, ckpt: Path, art: Path) -> Setup:
    folder = tmp / "webapp"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"name": "my app", "icons": []}))
    return Setup(["--output", folder, "--overwrite"], [folder])


def _output_file(tmp: Path, ckpt: Path, art: Path) -> Setup:
    (tmp / "out.onnx").write_bytes(b"x")
    return Setup(["--output", tmp / "out.onnx", "--overwrite"], [tmp])


def _under_a_file(tmp: Path, ckpt: Path, art: Path) -> Setup:
    (tmp / "notes.txt").write_text("x")
    return Setup(["--output", tmp / "notes.txt" / "out"], [tmp])


def _not_empty(tmp: Path, ckpt: Path, art: Path) -> Setup:
    folder = copy_artifact(art, tmp / "artifact")
    return Setup(["--output", folder], [folder])


def _damaged(change: Callable[[Path], None]):
    def setup(tmp: Path, ckpt: Path, art: Path) -> Setup:
        folder = Path(shutil.copytree(ckpt, tmp / "checkpoint"))
        change(folder)
        return Setup(["--model", folder, "--output", tmp / "out"], [folder])
    return setup


def _cut(name: str, keep: float = 0.5):
    def change(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])
    return change


def _as_bin(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


class _Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(folder: Path) -> None:
    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"weight": _Payload(folder.parent / "PWNED")}, folder / "pytorch_model.bin")


def _missing_shard(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))


def _nan_vision(folder: Path) -> None:
    """NaN in the vision tower's weights (as a never-initialised tensor holds): transformers' own
    outputs are NaN, which the parity gate once took for "no difference" (max() drops a NaN)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if "vision" in k and state[k].is_floating_point() and state[k].ndim > 1)
    state[key][:] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@dataclass(frozen=True)
class ExportCase:
    name: str
    setup: Callable[[Path, Path, Path], Setup]  # (scratch folder, checkpoint, artifact) -> Setup
    error: str  # in the one-line message


NOT_OURS = "--overwrite replaces only an artifact of this tool or an empty folder"
CASES = [
    ExportCase("overwrite a folder of user files", _user_files, f"{NOT_OURS}; "),
    ExportCase("overwrite the source checkpoint", _the_checkpoint, "has no manifest.json (it is not an artifact of this tool)"),
    ExportCase("overwrite an artifact holding a user's file", _artifact_plus("notes.txt"),
               "holds files its manifest does not list (notes.txt)"),
    ExportCase("overwrite an artifact holding a user's folder", _artifact_plus("mine/photo.jpg"),
               "holds files its manifest does not list (mine, mine/photo.jpg)"),
    ExportCase("overwrite a folder with another tool's manifest", _foreign_manifest,
               "has a manifest.json that this tool did not write"),
    ExportCase("--output is a file", _output_file, "exists and is not a folder"),
    ExportCase("--output under a file", _under_a_file, "notes.txt is a file, not a folder"),
    ExportCase("--output /", lambda tmp, c, a: Setup(["--output", "/", "--overwrite"], [tmp]),
               "a filesystem root cannot be an artifact folder"),
    ExportCase("--output not empty, no --overwrite", _not_empty, "is not empty; pass --overwrite to replace it"),
    ExportCase("truncated model.safetensors", _damaged(_cut("model.safetensors")), "model.safetensors: truncated"),
    ExportCase("model.safetensors missing its last byte", _damaged(_cut("model.safetensors", 0.9999999)),
               "model.safetensors: truncated"),
    ExportCase("random model.safetensors", _damaged(lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096))),
               "model.safetensors: not a safetensors file"),
    ExportCase("empty model.safetensors", _damaged(lambda f: (f / "model.safetensors").write_bytes(b"")),
               "model.safetensors: truncated or empty (0 bytes)"),
    ExportCase("truncated pytorch_model.bin", _damaged(lambda f: (_as_bin(f), _cut("pytorch_model.bin")(f))),
               "pytorch_model.bin: truncated or not a PyTorch checkpoint"),
    ExportCase("malicious pytorch_model.bin", _damaged(_malicious),
               "pytorch_model.bin: refused: it holds Python objects other than tensors (posix.system)"),
    ExportCase("weights index naming a missing shard", _damaged(_missing_shard),
               "model-00002-of-00002.safetensors is missing"),
    ExportCase("NaN weights in the checkpoint", _damaged(_nan_vision),
               "the checkpoint's own vision_encoder output image_features is not finite (NaN or infinity) in PyTorch"),
    ExportCase("config.json not JSON", _damaged(lambda f: (f / "config.json").write_text("{")), "is not valid JSON"),
    ExportCase("--model is a file", lambda tmp, c, a: Setup(["--model", c / "config.json", "--output", tmp / "o"], [c]),
               "config.json: a file, not a folder"),
]


def run_main(capfd, *args) -> tuple[int, str, str]:
    from export.cli import main

    capfd.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_export_refuses(checkpoint, artifact, case, tmp_path, capfd):
    made = case.setup(tmp_path, checkpoint, artifact)
    args = ["--target", "onnx", *made.args]
    if "--model" not in made.args:
        args = ["--model", checkpoint, *args]
    before = [snapshot(folder) for folder in made.untouched]
    code, out, err = run_main(capfd, *args, "-q")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("export: error: ") and case.error in lines[0], lines
    assert [snapshot(folder) for folder in made.untouched] == before  # nothing touched
    assert not (tmp_path / "PWNED").exists()  # the malicious pickle's payload never ran
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".previous"))]


def test_refusing_the_checkpoint_as_output_comes_before_the_heavy_imports(checkpoint, tmp_path):
    """As a user runs it, and refused before torch is imported (seconds, here): nothing was loaded."""
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    before = snapshot(copy)
    args = ["--model", str(copy), "--target", "onnx", "--output", str(copy), "--overwrite"]
    proc = subprocess.run([sys.executable, "-m", "export", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert NOT_OURS in proc.stderr and snapshot(copy) == before
    probe = f"import sys; from export.cli import main; code = main({args!r}); print('torch' in sys.modules); sys.exit(code)"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_overwrite_replaces_an_empty_folder_and_an_artifact(checkpoint, artifact, tmp_path):
    """What --overwrite may replace passes the check (the export itself is tested elsewhere)."""
    from export.destination import check_destination

    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", overwrite=False)
    check_destination(copy_artifact(artifact, tmp_path / "artifact"), overwrite=True)
    (tmp_path / "artifact" / ".manifest.json.tmp").write_text("{}")  # what an interrupted manifest write leaves
    check_destination(tmp_path / "artifact", overwrite=True)
