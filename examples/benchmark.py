"""Time transformers eager fp32 and this project's artifacts in one run, on the same image and prompt.

    python examples/benchmark.py --size base --targets onnx,openvino --precisions fp32,int8,int4 \
        --tokens 20,200 --beams 1,3 [--model CKPT] [--repeats 3] [--json OUT] [--cache DIR] [--fresh]

Builds the checkpoint (`embedded:<size>`, random weights with the real shapes, or `--model`, a
transformers-native checkpoint folder), exports every target x precision missing from the cache
(an artifact is reused when its manifest names the same source, target and precision; --fresh
exports again, e.g. after changing the exporter), then times
transformers and each candidate (target x precision x tokens x beams). Every candidate runs in a fresh
subprocess, so its peak RSS is its own. Every run decodes exactly N tokens (min_new_tokens =
max_new_tokens = N), the checkpoint's other generation defaults kept, on both sides.

Reported per row (medians over --repeats, after one warm-up run): vision ms, encoder ms (prompt
embedding + encoder), ms per decoded token, end-to-end ms (preprocessing included), peak RSS, artifact
size, and ratios against transformers for the same tokens and beams. Candidates whose target or
precision is not available here are skipped with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/florence2-edge/bench").expanduser()
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# shared by both sides: the input


def bench_image(seed: int = 0, size: tuple[int, int] = (640, 480)):
    """The same pixels in every process."""
    from runtime.probes import sample_image

    return sample_image(seed, size)


def _peak_rss_mb() -> float:
    """This process's peak RSS. On Linux, VmHWM: ru_maxrss survives execve, so a worker started by a
    parent holding 1 GB (torch, the exporter) would report at least that."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _timed_runs(once, repeats: int) -> tuple[dict, list[int]]:
    """One warm-up call, then `repeats` calls of once() -> ({stage: seconds}, ids); median per stage in ms."""
    once()
    samples, ids = [], None
    for _ in range(repeats):
        stages, ids = once()
        samples.append(stages)
    return {k: 1000 * statistics.median(s[k] for s in samples) for k in samples[0]}, ids


# ---------------------------------------------------------------------------------------------
# workers: one subprocess per measured configuration


def reference_worker(spec: dict) -> dict:
    """transformers eager fp32 (no torch.compile), the attention implementation transformers picks."""
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    kwargs = {"attn_implementation": spec["attention"]} if spec.get("attention") else {}
    model = Florence2ForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=torch.float32, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(spec["checkpoint"])
    # Embedding rows past the tokenizer are padding: the runtime never picks them; neither does the reference.
    padded = list(range(len(processor.tokenizer), model.config.text_config.vocab_size)) or None
    marks: dict[str, float] = {}

    def mark(name):
        return lambda *_: marks.__setitem__(name, time.perf_counter())

    inner = model.model
    inner.vision_tower.register_forward_pre_hook(mark("vision_start"))
    inner.multi_modal_projector.register_forward_hook(mark("vision_end"))
    inner.language_model.encoder.register_forward_pre_hook(mark("encoder_start"))
    inner.language_model.encoder.register_forward_hook(mark("encoder_end"))
    image, prompt, tokens = bench_image(), spec["prompt"], spec["tokens"]

    def once():
        began = time.perf_counter()
        inputs = processor(text=prompt, images=image, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, num_beams=spec["beams"], max_new_tokens=tokens, min_new_tokens=tokens,
                                 suppress_tokens=padded)[0].tolist()
        end = time.perf_counter()
        return {"vision": marks["vision_end"] - marks["vision_start"],
                "encoder": marks["encoder_end"] - marks["encoder_start"],
                "decode": (end - marks["encoder_end"]) / (len(ids) - 1), "e2e": end - began}, ids

    medians, ids = _timed_runs(once, spec["repeats"])
    return {**_row(medians), "ids": ids, "attention": model.config._attn_implementation,
            "threads": torch.get_num_threads(), "peak_rss_mb": _peak_rss_mb()}


def candidate_worker(spec: dict) -> dict:
    """One artifact through the runtime only: no torch, no transformers in this process."""
    from runtime import Florence2

    model = Florence2.load(spec["artifact"], verify=False)
    image, tokens = bench_image(), spec["tokens"]
    options = dict(num_beams=spec["beams"], max_new_tokens=tokens, min_new_tokens=tokens)

    def once():
        with model.profile() as stages:
            began = time.perf_counter()
            ids = model.generate(image, spec["task"], spec["text"], **options)
            e2e = time.perf_counter() - began
        return {"vision": stages["vision"], "encoder": stages["encoder"], "decode": stages["decode"] / (len(ids) - 1),
                "e2e": e2e}, ids

    medians, ids = _timed_runs(once, spec["repeats"])
    return {**_row(medians), "ids": ids, "device": model.device, "peak_rss_mb": _peak_rss_mb()}


def _row(ms: dict) -> dict:
    return {"vision_ms": ms["vision"], "encoder_ms": ms["encoder"], "decode_ms_per_token": ms["decode"],
            "e2e_ms": ms["e2e"]}


def run_worker(spec: dict) -> dict:
    """Runs one worker in a fresh interpreter; raises RuntimeError with its stderr tail on failure."""
    with tempfile.TemporaryDirectory(prefix="florence2-bench-") as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"worker exited with {proc.returncode}: {tail}")
        return json.loads(out_path.read_text())


# ---------------------------------------------------------------------------------------------
# the parent: checkpoint, exports, schedule, table


def resolve_checkpoint(args, cache: Path) -> tuple[str, Path]:
    """(name used in cache folder names, checkpoint folder)."""
    if args.model:
        folder = Path(args.model).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: not a checkpoint folder (no config.json)")
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
        return f"{folder.name}-{digest}", folder
    name = f"embedded-{args.size}"
    folder = cache / name / "checkpoint"
    if not (folder / "config.json").is_file():
        from export.embedded import build_checkpoint

        print(f"building embedded:{args.size} (random weights, real shapes) in {folder}", flush=True)
        build_checkpoint(folder, preset=args.size)
    return name, folder


def availability(target: str, precision: str) -> str | None:
    """None when `target` can export and run `precision` here, else the reason it cannot."""
    import importlib

    from export.targets import TARGETS
    from platforms import BACKENDS

    if target not in TARGETS:
        return f"no {target} export target in this florence2-edge yet"
    spec = TARGETS[target]
    if precision not in spec.precisions:
        return spec.refused.get(precision, f"{target} does not offer {precision}")
    module, extra = BACKENDS.get(target, (None, None))
    if module is None:
        return f"no runtime backend for {target}"
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"{target} backend not importable ({err}); pip install 'florence2-edge[{extra}]'"
    return None


def ensure_artifact(cache: Path, name: str, checkpoint: Path, target: str, precision: str, fresh: bool = False) -> Path:
    """The cached artifact for (checkpoint, target, precision), exported when missing, stale or `fresh`."""
    from export.cli import quiet_libraries
    from export.pipeline import run_export
    from runtime.errors import ArtifactError
    from runtime.manifest import read_manifest

    folder = cache / f"{name}-{target}-{precision}"
    try:
        manifest = read_manifest(folder, verify=False)
        if (not fresh and (manifest.source.get("model"), manifest.target, manifest.precision)
                == (str(checkpoint), target, precision)
                and all((folder / g.file).is_file() for g in manifest.graphs.values())):
            return folder
    except ArtifactError:
        pass
    print(f"exporting {target} {precision} -> {folder}", flush=True)
    quiet_libraries()
    began = time.perf_counter()
    run_export(str(checkpoint), target, folder, overwrite=True, precision=precision)
    print(f"  exported in {time.perf_counter() - began:.0f} s", flush=True)
    return folder


def artifact_mb(folder: Path) -> float:
    """Every file of the artifact (graphs, weight files, shared tables, tokenizer, manifest)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


def checkpoint_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def with_ratios(run: dict, ref: dict) -> dict:
    ratio = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    return {**run,
            "speedup_vision": ratio(ref["vision_ms"], run["vision_ms"]),
            "speedup_encoder": ratio(ref["encoder_ms"], run["encoder_ms"]),
            "speedup_decode": ratio(ref["decode_ms_per_token"], run["decode_ms_per_token"]),
            "speedup_e2e": ratio(ref["e2e_ms"], run["e2e_ms"]),
            "rss_ratio": ratio(run["peak_rss_mb"], ref["peak_rss_mb"]),
            "size_ratio": ratio(run["size_mb"], ref["size_mb"])}


COLUMNS = [("target", "target", "{}"), ("precision", "precision", "{}"), ("tokens", "tokens", "{}"),
           ("beams", "beams", "{}"), ("vision_ms", "vision ms", "{:.0f}"), ("encoder_ms", "encoder ms", "{:.0f}"),
           ("decode_ms_per_token", "ms/token", "{:.1f}"), ("e2e_ms", "e2e ms", "{:.0f}"),
           ("peak_rss_mb", "RSS MB", "{:.0f}"), ("size_mb", "size MB", "{:.0f}"),
           ("speedup_e2e", "x e2e", "{:.2f}"), ("speedup_decode", "x decode", "{:.2f}"),
           ("rss_ratio", "RSS ratio", "{:.2f}"), ("beam_step_ratio", "beam/greedy", "{:.2f}"),
           ("ids_match", "same ids", "{}")]


def add_beam_ratios(rows: list[dict]) -> None:
    """beam_step_ratio: a row's ms per token over the greedy row's of the same target, precision and tokens."""
    greedy = {(r["target"], r["precision"], r["tokens"]): r["decode_ms_per_token"] for r in rows if r["beams"] == 1}
    for row in rows:
        base = greedy.get((row["target"], row["precision"], row["tokens"]))
        if base and row["beams"] > 1:
            row["beam_step_ratio"] = round(row["decode_ms_per_token"] / base, 3)


def print_table(rows: list[dict]) -> None:
    cells = [[header for _, header, _ in COLUMNS]]
    cells += [["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda kind: lambda s: [kind(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--model", help="a transformers-native checkpoint folder (instead of embedded:<size>)")
    parser.add_argument("--targets", type=csv(str), default=["onnx"])
    parser.add_argument("--precisions", type=csv(str), default=["fp32"])
    parser.add_argument("--tokens", type=csv(int), default=[20])
    parser.add_argument("--beams", type=csv(int), default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up (default 3)")
    parser.add_argument("--task", default="<CAPTION>")
    parser.add_argument("--text", help="text input for tasks that take one")
    parser.add_argument("--attention", help="transformers attn_implementation (default: what transformers picks)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"artifacts and checkpoints (default {DEFAULT_CACHE})")
    parser.add_argument("--fresh", action="store_true", help="export again even where the cache has an artifact")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.tokens) or any(b < 1 for b in args.beams):
        parser.error("--repeats, --tokens and --beams take integers >= 1")
    return args


def prepare_candidates(args, cache: Path, name: str, checkpoint: Path) -> tuple[list[dict], list[dict]]:
    """(candidates with their artifact folder, skipped with the reason), exporting what is missing."""
    candidates, skipped = [], []
    for target in args.targets:
        for precision in args.precisions:
            reason = availability(target, precision)
            if reason is None:
                try:
                    artifact = ensure_artifact(cache, name, checkpoint, target, precision, args.fresh)
                    candidates.append({"target": target, "precision": precision, "artifact": artifact,
                                       "size_mb": artifact_mb(artifact)})
                    continue
                except Exception as err:  # a failed export skips its candidate, not the whole benchmark
                    reason = f"export failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            print(f"skip {target} {precision}: {reason}", flush=True)
            skipped.append({"target": target, "precision": precision, "reason": reason})
    return candidates, skipped


def measure(args, checkpoint: Path, candidates: list[dict], skipped: list[dict]) -> tuple[dict, list[dict]]:
    """Per (tokens, beams): transformers, then every candidate right after it (drifting machine load
    then shifts both sides alike)."""
    common = {"repeats": args.repeats, "task": args.task, "text": args.text, "prompt": args.task + (args.text or "")}
    reference = {"name": "transformers eager fp32", "checkpoint": str(checkpoint), "size_mb": checkpoint_mb(checkpoint),
                 "runs": []}
    runs = []
    for tokens, beams in [(t, b) for t in args.tokens for b in args.beams]:
        print(f"transformers fp32 tokens={tokens} beams={beams}", flush=True)
        ref = run_worker({**common, "kind": "reference", "checkpoint": str(checkpoint), "tokens": tokens,
                          "beams": beams, "attention": args.attention})
        reference["runs"].append({"tokens": tokens, "beams": beams, **ref})
        for cand in candidates:
            print(f"{cand['target']} {cand['precision']} tokens={tokens} beams={beams}", flush=True)
            try:
                run = run_worker({**common, "kind": "candidate", "artifact": str(cand["artifact"]), "tokens": tokens,
                                  "beams": beams})
            except RuntimeError as err:
                print(f"  failed: {err}", flush=True)
                skipped.append({"target": cand["target"], "precision": cand["precision"], "tokens": tokens,
                                "beams": beams, "reason": str(err)})
                continue
            run = {"target": cand["target"], "precision": cand["precision"], "tokens": tokens, "beams": beams, **run,
                   "size_mb": cand["size_mb"], "ids_match": run["ids"] == ref["ids"]}
            runs.append(with_ratios(run, {**ref, "size_mb": reference["size_mb"]}))
    reference["attention"] = reference["runs"][0]["attention"]
    reference["peak_rss_mb"] = max(r["peak_rss_mb"] for r in reference["runs"])
    return reference, runs


def report(args, reference: dict, runs: list[dict], skipped: list[dict], load_start: float) -> None:
    table = [{"target": "transformers", "precision": "fp32", **r, "size_mb": reference["size_mb"]}
             for r in reference["runs"]] + runs
    add_beam_ratios(table)
    print()
    print_table(sorted(table, key=lambda r: (r["tokens"], r["beams"], r["target"] != "transformers")))
    for skip in skipped:
        print(f"skipped {skip['target']} {skip['precision']}: {skip['reason']}")
    load_end = os.getloadavg()[0]
    print(f"load average (1 min): {load_start:.1f} at the start, {load_end:.1f} at the end, {os.cpu_count()} CPUs")
    if args.json:
        drop_ids = lambda r: {k: v for k, v in r.items() if k != "ids"}  # noqa: E731
        reference = {**reference, "runs": [drop_ids(r) for r in reference["runs"]]}
        result = {"reference": reference, "runs": [drop_ids(r) for r in runs], "skipped": skipped,
                  "settings": {"size": None if args.model else args.size, "model": args.model, "task": args.task,
                               "repeats": args.repeats, "cpu_count": os.cpu_count(),
                               "load_average": [load_start, load_end]}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = (reference_worker if spec["kind"] == "reference" else candidate_worker)(spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return 0
    load_start = os.getloadavg()[0]  # timings on a busy machine mean less: say how busy it was
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stdout)  # the exporter's per-graph lines
    cache = args.cache.expanduser()
    name, checkpoint = resolve_checkpoint(args, cache)
    candidates, skipped = prepare_candidates(args, cache, name, checkpoint)
    reference, runs = measure(args, checkpoint, candidates, skipped)
    report(args, reference, runs, skipped, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
