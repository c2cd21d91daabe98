"""The service as it is packaged: the kiosk page (and the trained default's weights) are package data
inside the wheel, the serve extra names its dependencies, CI installs Chromium, and the core runtime
imports nothing of the service."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = ("runtime/serve/static/index.html", "runtime/serve/static/kiosk.css", "runtime/serve/static/kiosk.js")


WEIGHTS = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "processor_config.json",
           "floors.json")


def test_the_wheel_holds_the_kiosk_page_and_the_trained_weights(tmp_path):
    source = tmp_path / "source"  # built from a copy: the checkout gets no build/ or egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("runtime", "export", "quantize", "platforms"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("florence2_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PAGE) <= names
    assert {"runtime/serve/app.py", "runtime/serve/worker.py", "runtime/serve/__main__.py"} <= names
    # embedded:tiny, the export default, loads from package data (export/embedded.py TRAINED_WEIGHTS).
    shipped = {f"export/synthetic/weights/{name}" for name in WEIGHTS}
    assert shipped <= names, sorted(shipped - names)


def test_the_serve_extra_and_the_test_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serve = " ".join(extras["serve"])
    assert all(name in serve for name in ("starlette", "uvicorn", "python-multipart"))
    test = " ".join(extras["test"])
    assert "serve" in test.split("[", 1)[1].split("]")[0].split(",")
    assert "playwright" in test and "httpx" in test


def test_ci_installs_chromium_before_pip_when_it_is_missing():
    script = (REPO / ".ci" / "run").read_text()
    guard = script.index("if [ ! -x /usr/bin/chromium ]")
    install = script.index("apt-get install -y -qq chromium")
    assert guard < install < script.index("pip install")


def test_the_core_runtime_imports_nothing_of_the_service():
    code = ("import sys, runtime, runtime.cli, runtime.batch.job\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'multipart', 'httpx')"
            " or m.startswith('runtime.serve')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_extra_the_service_says_which_to_install(tmp_path):
    blocker = ("import sys, importlib.abc, runpy\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
               "sys.meta_path.insert(0, Block())\n"
               f"sys.argv = ['runtime.serve', '--model', {str(tmp_path)!r}]\n"
               "runpy.run_module('runtime.serve', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and 'pip install "florence2-edge[serve,onnx]"' in result.stderr
