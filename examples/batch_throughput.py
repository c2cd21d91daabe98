"""Batch OCR throughput: pages per minute at batch 1 and batch N, and the CLI against a plain loop.

    python examples/batch_throughput.py --size base --precision int8 [--pages 8] [--tokens 200] \
        [--batches 1,4] [--repeats 3] [--artifact DIR] [--cache DIR] [--json OUT]

Every page decodes exactly --tokens tokens (min_new_tokens = max_new_tokens) of an OCR prompt, so
random-weight checkpoints (`embedded:base`) do the work a real page of text would. Two measurements,
each as interleaved repeats (every configuration once per round, rounds repeated; a drifting machine
load then shifts all configurations alike), reported as medians:

1. `model.run` in one process on lists of `--batches` pages, greedy and the checkpoint's own beam
   count: pages per minute, and each batch size against batch 1.
2. `python -m runtime ... --output` (prefetch, results file, fsync per line) against a plain Python
   loop over `model(path, task)`, each in a fresh process, batch 1 greedy: pages per minute of the job
   (model loading excluded on both sides: the CLI's summary line times its run, the loop times itself).

The artifact is exported once (with examples/benchmark.py's cache, default ~/.cache/florence2-edge/bench)
and reused; --artifact runs an existing one instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TASK = "<OCR>"
PAGE_SIZE = (1275, 1650)  # US Letter at 150 dpi
SUMMARY = re.compile(r"in ([0-9.]+) s \(")


def _benchmark():
    """examples/benchmark.py as a module: its checkpoint building and artifact cache."""
    spec = importlib.util.spec_from_file_location("florence2_benchmark", HERE / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def artifact_for(args) -> Path:
    if args.artifact:
        return Path(args.artifact)
    bench = _benchmark()
    cache = Path(args.cache).expanduser() if args.cache else bench.DEFAULT_CACHE
    name, checkpoint = bench.resolve_checkpoint(argparse.Namespace(model=None, size=args.size), cache)
    return bench.ensure_artifact(cache, name, checkpoint, "onnx", args.precision)


def write_pages(folder: Path, count: int) -> list[Path]:
    from runtime.probes import sample_image

    paths = []
    for index in range(count):
        path = folder / f"page-{index:03d}.png"
        sample_image(100 + index, PAGE_SIZE).save(path)
        paths.append(path)
    return paths


def options(tokens: int, beams: int) -> dict:
    return {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": beams}


def batch_rounds(artifact: Path, paths: list[Path], args) -> list[dict]:
    """Pages per minute of model.run over batches, per (batch size, beams), median of the rounds."""
    from runtime import Florence2

    model = Florence2.load(artifact, verify=False)
    beams = sorted({1, model.defaults.num_beams})
    configs = [(size, b) for b in beams for size in args.batches]
    model.run([str(paths[0])], TASK, **options(8, 1))  # warm-up: session and allocator start-up
    samples = {config: [] for config in configs}
    for round_ in range(args.repeats):
        for size, b in configs:
            began = time.perf_counter()
            for start in range(0, len(paths), size):
                model.run([str(p) for p in paths[start:start + size]], TASK, **options(args.tokens, b))
            minutes = (time.perf_counter() - began) / 60
            samples[(size, b)].append(len(paths) / minutes)
            print(f"  round {round_ + 1}: batch {size}, beams {b}: {samples[(size, b)][-1]:.2f} pages/min", flush=True)
    rows = []
    for size, b in configs:
        median = statistics.median(samples[(size, b)])
        base = statistics.median(samples[(1, b)]) if (1, b) in samples else None
        rows.append({"batch": size, "beams": b, "pages_per_min": median, "samples": samples[(size, b)],
                     "vs_batch_1": median / base if base else None})
    return rows


def loop_worker(spec: dict) -> None:
    """The plain loop a user would write: load once, then model(path, task) per page."""
    from runtime import Florence2

    model = Florence2.load(spec["artifact"])
    began = time.perf_counter()
    for path in spec["paths"]:
        model(path, TASK, **options(spec["tokens"], 1))
    print(json.dumps({"seconds": time.perf_counter() - began}))


def run_loop(artifact: Path, paths: list[Path], tokens: int) -> float:
    spec = json.dumps({"artifact": str(artifact), "paths": [str(p) for p in paths], "tokens": tokens})
    proc = subprocess.run([sys.executable, __file__, "--loop-worker", spec], cwd=REPO, capture_output=True,
                          text=True, env=_env())
    if proc.returncode != 0:
        raise SystemExit(f"loop worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def run_cli(artifact: Path, folder: Path, tokens: int, output: Path) -> float:
    command = [sys.executable, "-m", "runtime", "--model", str(artifact), str(folder), "--task", TASK,
               "--max-new-tokens", str(tokens), "--min-new-tokens", str(tokens), "--num-beams", "1",
               "--output", str(output), "--restart"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env())
    found = SUMMARY.search(proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"CLI failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return float(found.group(1))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def cli_rounds(artifact: Path, folder: Path, paths: list[Path], args) -> dict:
    samples = {"cli": [], "loop": []}
    output = folder.parent / "results.jsonl"
    for round_ in range(args.repeats):
        # Alternate which side goes first, so neither always runs on a warmer page cache.
        order = ["cli", "loop"] if round_ % 2 == 0 else ["loop", "cli"]
        for side in order:
            seconds = run_cli(artifact, folder, args.tokens, output) if side == "cli" else run_loop(artifact, paths, args.tokens)
            samples[side].append(len(paths) / (seconds / 60))
            print(f"  round {round_ + 1}: {side}: {samples[side][-1]:.2f} pages/min", flush=True)
    cli, loop = statistics.median(samples["cli"]), statistics.median(samples["loop"])
    return {"cli_pages_per_min": cli, "loop_pages_per_min": loop, "cli_vs_loop": cli / loop, "samples": samples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--size", choices=["random-tiny", "base", "large"], default="base")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--artifact", help="an existing artifact folder (instead of exporting embedded:<size>)")
    parser.add_argument("--cache", help="artifact cache (default: examples/benchmark.py's)")
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--batches", type=csv, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cli", action="store_true", help="only the batch measurement")
    parser.add_argument("--skip-batch", action="store_true", help="only the CLI against the plain loop")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--loop-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_worker:
        loop_worker(json.loads(args.loop_worker))
        return 0
    if 1 not in args.batches:
        parser.error("--batches must include 1 (the reference)")
    load = os.getloadavg()[0]
    artifact = artifact_for(args)
    with tempfile.TemporaryDirectory(prefix="florence2-throughput-") as scratch:
        folder = Path(scratch) / "pages"
        folder.mkdir()
        paths = write_pages(folder, args.pages)
        print(f"{args.pages} pages of {PAGE_SIZE[0]}x{PAGE_SIZE[1]}, {TASK}, {args.tokens} tokens each, {artifact}",
              flush=True)
        rows = [] if args.skip_batch else batch_rounds(artifact, paths, args)
        cli = None if args.skip_cli else cli_rounds(artifact, folder, paths, args)
    print()
    if rows:
        print("batch  beams  pages/min  x batch 1")
    for row in rows:
        print(f"{row['batch']:>5}  {row['beams']:>5}  {row['pages_per_min']:>9.2f}  {row['vs_batch_1']:>9.2f}")
    if cli:
        print(f"CLI {cli['cli_pages_per_min']:.2f} pages/min, plain loop {cli['loop_pages_per_min']:.2f} pages/min: "
              f"CLI / loop = {cli['cli_vs_loop']:.3f} (batch 1, greedy)")
    print(f"load average (1 min): {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"artifact": str(artifact), "pages": args.pages, "tokens": args.tokens,
                                         "repeats": args.repeats, "batch": rows, "cli": cli}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
