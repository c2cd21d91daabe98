"""examples/ray_batch_ocr.py on a local Ray (2 CPUs, one actor with one CPU, a small object store) gives
the CLI's results file for the same inputs: the same header and, item for item, the same records but
for `seconds`. One test: Ray's start-up takes tens of seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

pytest.importorskip("ray.data")
pytest.importorskip("pypdfium2")

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> tuple[dict, dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines[0], {r["image"]: {k: v for k, v in r.items() if k != "seconds"} for r in lines[1:]}


@pytest.mark.timeout(900)
def test_ray_results_equal_the_cli(onnx_artifact, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(3):
        make_image(20 + index, (200 + 40 * index, 160)).save(inputs / f"img-{index}.png")
    pages = [make_image(30, (150, 200)), make_image(31, (200, 150))]
    pages[0].save(inputs / "doc.pdf", save_all=True, append_images=pages[1:], resolution=100)
    (inputs / "broken.png").write_bytes(b"not a png")
    common = ["--model", str(onnx_artifact), str(inputs), "--task", "<OCR>", "--max-new-tokens", "6"]
    cli = subprocess.run([sys.executable, "-m", "runtime", *common, "--output", str(tmp_path / "cli.jsonl"), "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 1, cli.stderr  # broken.png
    # The example runs as a script (its folder first on sys.path): this checkout's runtime must win.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    ray = subprocess.run([sys.executable, "examples/ray_batch_ocr.py", *common, "--output", str(tmp_path / "ray.jsonl"),
                          "--num-cpus", "2", "--object-store-mb", "100", "--concurrency", "1", "--cpus-per-actor", "1",
                          "--batch-size", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert ray.returncode == 1, ray.stderr[-3000:]
    assert "6 items: 5 answered, 0 skipped (already done), 1 failed" in ray.stderr
    cli_header, cli_records = read(tmp_path / "cli.jsonl")
    ray_header, ray_records = read(tmp_path / "ray.jsonl")
    assert ray_header == cli_header
    assert ray_records == cli_records
    assert len(cli_records) == 6 and sum("error" in r for r in cli_records.values()) == 1
