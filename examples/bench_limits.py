"""What the hardware allows, beside what the benchmark measures (examples/benchmark.py):

- `gemv_bandwidth(nbytes)`: memory bandwidth as a decode step sees it, a numpy float32 matrix-vector
  product over `nbytes` of matrix (best of a few: the least disturbed run);
- `step_bytes(...)` and `floor_ms(...)`: the bytes one decode step must read (decoder weights, the
  self-attention cache at the mean generated length, the cross-attention K/V of one image) and the
  time that takes at that bandwidth: a step cannot be faster than its floor, and the ratio says how
  far above it a runtime is (Python and kernel overheads, compute);
- `cold_start(...)`: seconds from launching `python -m runtime --model ART IMAGE --task T` to its
  exit with the first result, the price a CLI user pays per call (OpenVINO: with an empty and a warm
  compile cache, FLORENCE2_EDGE_CACHE).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GEMV_COLUMNS = 4096
SIDE_FILES_NOT_READ = ("tokenizer.json",)  # files beside the graphs a decode step does not read


def gemv_bandwidth(nbytes: int, repeats: int = 5) -> dict:
    """{"bytes", "best_ms", "gb_per_s"} of a float32 matvec over a matrix of about `nbytes`."""
    rows = max(1, int(nbytes) // (4 * GEMV_COLUMNS))
    matrix = np.random.default_rng(0).standard_normal((rows, GEMV_COLUMNS), dtype=np.float32)
    vector = np.ones(GEMV_COLUMNS, dtype=np.float32)
    matrix @ vector  # pages touched, kernels loaded
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - began)
    return {"bytes": matrix.nbytes, "best_ms": 1000 * best, "gb_per_s": matrix.nbytes / best / 1e9}


def artifact_decoder_bytes(folder: Path) -> int:
    """The decoder graph's bytes in an artifact: its file, its weights file, and the shared files
    beside the graphs (the tied word embedding, read for the logits every step)."""
    from runtime.manifest import read_manifest

    manifest = read_manifest(folder, verify=False)
    graph = manifest.graphs["decoder"]
    shared = sum(f.bytes for name, f in manifest.files.items()
                 if name not in SIDE_FILES_NOT_READ and name != manifest.conformance)
    return graph.bytes + (graph.weights.bytes if graph.weights else 0) + shared


def cache_bytes(dims, tokens: int, beams: int, prompt_tokens: int = 10, element_bytes: int = 4) -> int:
    """K/V bytes one step reads: self-attention of `beams` rows at the mean length tokens/2, and the
    cross-attention of one image (shared by its beams) over image tokens + prompt."""
    per_row = dims.decoder_heads * dims.head_dim * element_bytes * 2 * dims.decoder_layers  # K and V, every layer
    return per_row * (beams * tokens // 2 + dims.image_tokens + prompt_tokens)


def floor_ms(nbytes: int, gb_per_s: float) -> float:
    return nbytes / (gb_per_s * 1e9) * 1000


def cold_start(artifact: Path, image: Path, task: str, cache_dir: Path | None = None, repo: Path | None = None,
               max_new_tokens: int = 20) -> float:
    """Seconds from launching `python -m runtime` on one image to its exit (result written).

    Greedy, at most `max_new_tokens` (what the timed rows decode), not the checkpoint's defaults:
    random weights rarely stop, and up to 1024 tokens x 3 beams would time the decoder, not the
    start (the earlier readings of 30-80 s were mostly that)."""
    env = {**os.environ}
    if repo is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    if cache_dir is not None:
        env["FLORENCE2_EDGE_CACHE"] = str(cache_dir)
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runtime", "--model", str(artifact), str(image), "--task", task,
                           "--max-new-tokens", str(max_new_tokens), "--num-beams", "1"],
                          cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"python -m runtime exited with {proc.returncode}: {tail}")
    return seconds


def cold_starts(artifact: Path, target: str, image: Path, task: str, repo: Path | None = None,
                max_new_tokens: int = 20) -> dict:
    """{"cold_start_s": ..., and for openvino "warm_cache_start_s": ...}: an empty compile cache, then
    the same cache again (what a second call of a CLI user finds)."""
    with tempfile.TemporaryDirectory(prefix="florence2-cache-") as cache:
        result = {"cold_start_s": cold_start(artifact, image, task, Path(cache), repo, max_new_tokens)}
        if target == "openvino":
            result["warm_cache_start_s"] = cold_start(artifact, image, task, Path(cache), repo, max_new_tokens)
    return result
