"""Time transformers (fp32: its default attention and its other forms) and this project's artifacts
in one run, on the same image and prompt.

    python examples/benchmark.py --size base --targets onnx,openvino --precisions fp32,int8,int4 \
        --tokens 20,200 --beams 1,3 [--model CKPT] [--repeats 3] [--json OUT] [--cache DIR] [--fresh] \
        [--peers default,eager,int8-dynamic,bf16-autocast] [--skip-limits]

Builds the checkpoint (`embedded:<size>`, random weights with the real shapes, or `--model`, a
transformers-native checkpoint folder), exports every target x precision missing from the cache
(an artifact is reused when its manifest names the same source, target and precision; --fresh
exports again, e.g. after changing the exporter), then times
transformers and each candidate (target x precision x tokens x beams). Every candidate runs in a fresh
subprocess, so its peak RSS is its own. Every run decodes exactly N tokens (min_new_tokens =
max_new_tokens = N), the checkpoint's other generation defaults kept, on both sides.

Reported per row (medians over --repeats, after one warm-up run): vision ms, encoder ms (prompt
embedding + encoder), ms per decoded token, end-to-end ms (preprocessing included), peak RSS, artifact
size, and ratios against transformers for the same tokens and beams ("x e2e": its default fp32;
"x best": the fastest transformers peer end to end). Peers (examples/bench_peers.py): transformers
with sdpa (default) and eager attention, dynamic int8 Linear layers, bf16 autocast. Limits
(examples/bench_limits.py, off with --skip-limits): the GEMV bandwidth, each decode step as a multiple
of its floor (bytes it must read / bandwidth: "x floor"), and the cold start of `python -m runtime`
per artifact (OpenVINO also with a warm compile cache). Candidates whose target or precision is not
available here are skipped with the reason.
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
    """transformers, one of examples/bench_peers.py's PEERS (default: fp32 with the attention
    implementation transformers picks, or --attention's), no torch.compile."""
    from bench_peers import peer_worker

    return peer_worker(spec, _timed_runs, bench_image, _peak_rss_mb)


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


CALIBRATED = "-calibrated"  # --precisions int8-calibrated: python -m export --int8 --calibration builtin


def export_precision(precision: str) -> tuple[str, bool]:
    """("int8", True) for "int8-calibrated"; (precision, False) otherwise."""
    return precision.removesuffix(CALIBRATED), precision.endswith(CALIBRATED)


def availability(target: str, precision: str) -> str | None:
    """None when `target` can export and run `precision` here, else the reason it cannot."""
    import importlib

    from export.calibration_options import CALIBRATED_TARGETS
    from export.targets import TARGETS
    from platforms import BACKENDS

    precision, calibrated = export_precision(precision)
    if calibrated and (precision != "int8" or target not in CALIBRATED_TARGETS):
        return f"calibration is for int8 on {' and '.join(CALIBRATED_TARGETS)}"

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
    precision, calibrated = export_precision(precision)
    try:
        manifest = read_manifest(folder, verify=False)
        method = manifest.quantization.method if manifest.quantization else None
        if (not fresh and (manifest.source.get("model"), manifest.target, manifest.precision, method == "calibrated")
                == (str(checkpoint), target, precision, calibrated)
                and all((folder / g.file).is_file() for g in manifest.graphs.values())):
            return folder
    except ArtifactError:
        pass
    print(f"exporting {target} {precision}{' calibrated' if calibrated else ''} -> {folder}", flush=True)
    quiet_libraries()
    began = time.perf_counter()
    run_export(str(checkpoint), target, folder, overwrite=True, precision=precision,
               **({"calibration": "builtin"} if calibrated else {}))
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
           ("speedup_e2e", "x e2e", "{:.2f}"), ("speedup_best", "x best", "{:.2f}"),
           ("speedup_decode", "x decode", "{:.2f}"), ("x_floor", "x floor", "{:.1f}"),
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
    parser.add_argument("--size", choices=["random-tiny", "base", "large"], default="base")
    parser.add_argument("--model", help="a transformers-native checkpoint folder (instead of embedded:<size>)")
    parser.add_argument("--targets", type=csv(str), default=["onnx"])
    parser.add_argument("--precisions", type=csv(str), default=["fp32"])
    parser.add_argument("--tokens", type=csv(int), default=[20])
    parser.add_argument("--beams", type=csv(int), default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up (default 3)")
    parser.add_argument("--task", default="<CAPTION>")
    parser.add_argument("--text", help="text input for tasks that take one")
    parser.add_argument("--attention", help="transformers attn_implementation of the default peer (default: what transformers picks)")
    parser.add_argument("--peers", type=csv(str), default=["default", "eager", "int8-dynamic", "bf16-autocast"],
                        help="transformers variants measured beside the default (examples/bench_peers.py)")
    parser.add_argument("--skip-limits", action="store_true", help="no bandwidth probe, decode floors or cold starts")
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


def available_peers(args, skipped: list[dict]) -> list[str]:
    """The transformers peers besides the default (the reference) that can run here; others skipped."""
    from bench_peers import unavailable

    peers = []
    for peer in args.peers:
        reason = unavailable(peer)
        if reason:
            print(f"skip transformers {peer}: {reason}", flush=True)
            skipped.append({"target": "transformers", "precision": peer, "reason": reason})
        elif peer != "default":
            peers.append(peer)
    return peers


def _measured(row: dict, spec: dict, ref: dict, skipped: list[dict]) -> dict | None:
    """One worker run as a table row (ratios against `ref`), or None with the failure in `skipped`."""
    print(f"{row['target']} {row['precision']} tokens={row['tokens']} beams={row['beams']}", flush=True)
    try:
        run = run_worker(spec)
    except RuntimeError as err:
        print(f"  failed: {err}", flush=True)
        skipped.append({**row, "reason": str(err)})
        return None
    return with_ratios({**row, **run, "ids_match": run["ids"] == ref["ids"]}, ref)


def measure(args, checkpoint: Path, candidates: list[dict], skipped: list[dict]) -> tuple[dict, list[dict]]:
    """Per (tokens, beams): transformers (default, then its other peers), then every candidate right after
    it (drifting machine load then shifts both sides alike)."""
    common = {"repeats": args.repeats, "task": args.task, "text": args.text, "prompt": args.task + (args.text or "")}
    reference = {"name": "transformers fp32", "checkpoint": str(checkpoint), "size_mb": checkpoint_mb(checkpoint),
                 "runs": []}
    peers, runs = available_peers(args, skipped), []
    for tokens, beams in [(t, b) for t in args.tokens for b in args.beams]:
        print(f"transformers fp32 tokens={tokens} beams={beams}", flush=True)
        shape = {"tokens": tokens, "beams": beams}
        ref = run_worker({**common, **shape, "kind": "reference", "checkpoint": str(checkpoint), "peer": "default",
                          "attention": args.attention})
        reference["runs"].append({**shape, **ref})
        ref = {**ref, "size_mb": reference["size_mb"]}
        for peer in peers:
            row = {"target": "transformers", "precision": peer, **shape, "size_mb": reference["size_mb"]}
            runs.append(_measured(row, {**common, **shape, "kind": "reference", "checkpoint": str(checkpoint),
                                        "peer": peer}, ref, skipped))
        for cand in candidates:
            row = {"target": cand["target"], "precision": cand["precision"], **shape, "size_mb": cand["size_mb"]}
            runs.append(_measured(row, {**common, **shape, "kind": "candidate", "artifact": str(cand["artifact"])},
                                  ref, skipped))
    reference["attention"] = reference["runs"][0]["attention"]
    reference["peak_rss_mb"] = max(r["peak_rss_mb"] for r in reference["runs"])
    return reference, [r for r in runs if r is not None]


def add_best_ratios(rows: list[dict]) -> None:
    """speedup_best: the fastest transformers row's end to end (same tokens and beams) over this row's."""
    best: dict = {}
    for row in rows:
        if row["target"] == "transformers":
            key = (row["tokens"], row["beams"])
            best[key] = min(best.get(key, float("inf")), row["e2e_ms"])
    for row in rows:
        fastest = best.get((row["tokens"], row["beams"]))
        if fastest and row["e2e_ms"]:
            row["speedup_best"] = round(fastest / row["e2e_ms"], 3)


def measure_limits(table: list[dict], candidates: list[dict], args) -> dict:
    """The GEMV bandwidth, each row's decode floor (added to the rows) and the cold starts."""
    from bench_limits import artifact_decoder_bytes, cache_bytes, cold_starts, floor_ms, gemv_bandwidth

    from runtime.manifest import read_manifest

    weight_bytes = {c["artifact"]: artifact_decoder_bytes(c["artifact"]) for c in candidates}
    probe = gemv_bandwidth(max(r.get("decoder_weight_bytes", 0) for r in table) or max(weight_bytes.values(), default=1 << 26))
    dims = read_manifest(candidates[0]["artifact"], verify=False).dims if candidates else None
    artifact_of = {(c["target"], c["precision"]): c["artifact"] for c in candidates}
    for row in table:
        weights = row.get("decoder_weight_bytes") or weight_bytes.get(artifact_of.get((row["target"], row["precision"])))
        if weights and dims is not None:
            row["step_bytes"] = weights + cache_bytes(dims, row["tokens"], row["beams"])
            row["floor_ms"] = floor_ms(row["step_bytes"], probe["gb_per_s"])
            row["x_floor"] = round(row["decode_ms_per_token"] / row["floor_ms"], 2)
    starts = []
    with tempfile.TemporaryDirectory(prefix="florence2-bench-image-") as scratch:
        image = Path(scratch) / "bench.png"
        bench_image().save(image)
        for cand in candidates:
            print(f"cold start {cand['target']} {cand['precision']}", flush=True)
            try:
                starts.append({"target": cand["target"], "precision": cand["precision"],
                               **cold_starts(cand["artifact"], cand["target"], image, args.task, REPO, args.tokens[0])})
            except RuntimeError as err:
                starts.append({"target": cand["target"], "precision": cand["precision"], "error": str(err)})
    return {"gemv": probe, "cold_starts": starts}


def print_limits(limits: dict) -> None:
    gemv = limits["gemv"]
    print(f"GEMV bandwidth: {gemv['gb_per_s']:.1f} GB/s (numpy float32 matvec over {gemv['bytes'] / 1e6:.0f} MB, "
          f"best of 5: {gemv['best_ms']:.2f} ms); x floor = ms/token over (decoder weight + KV bytes) / bandwidth")
    for start in limits["cold_starts"]:
        if "error" in start:
            print(f"cold start {start['target']} {start['precision']}: failed: {start['error']}")
            continue
        warm = f", {start['warm_cache_start_s']:.2f} s with a warm compile cache" if "warm_cache_start_s" in start else ""
        print(f"cold start {start['target']} {start['precision']}: {start['cold_start_s']:.2f} s to the first result "
              f"(python -m runtime, one image){warm}")


def report(args, reference: dict, runs: list[dict], skipped: list[dict], load_start: float, candidates: list[dict]) -> None:
    table = [{"target": "transformers", "precision": "fp32", **r, "size_mb": reference["size_mb"]}
             for r in reference["runs"]] + runs
    add_beam_ratios(table)
    add_best_ratios(table)
    limits = None if args.skip_limits else measure_limits(table, candidates, args)
    print()
    print_table(sorted(table, key=lambda r: (r["tokens"], r["beams"], r["target"] != "transformers")))
    if limits:
        print_limits(limits)
    for skip in skipped:
        print(f"skipped {skip['target']} {skip['precision']}: {skip['reason']}")
    load_end = os.getloadavg()[0]
    print(f"load average (1 min): {load_start:.1f} at the start, {load_end:.1f} at the end, {os.cpu_count()} CPUs")
    if args.json:
        drop_ids = lambda r: {k: v for k, v in r.items() if k != "ids"}  # noqa: E731
        reference = {**reference, "runs": [drop_ids(r) for r in reference["runs"]]}
        result = {"reference": reference, "runs": [drop_ids(r) for r in runs], "skipped": skipped, "limits": limits,
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
    report(args, reference, runs, skipped, load_start, candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
