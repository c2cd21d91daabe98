"""The fidelity report: a candidate artifact (fp16, int8, int4, another target) against its fp32 reference.

    python -m quantize.report --reference fl2-base-onnx --candidate fl2-base-onnx-int8 [fl2-base-onnx-int8-cal ...] \\
        [--images a.jpg b.png] [--tasks "<CAPTION>" "<OD>"] [--max-new-tokens 20] [--json report.json]

Several candidates (e.g. dynamic and calibrated int8) are each measured against the same reference on
the same inputs, then set side by side in one summary table.

Both artifacts run through their own backend (`platforms.open_session(manifest.target, ...)`, via
`runtime.Florence2`), so any target whose backend is importable can be either side. Measured:

- per graph, the least cosine similarity and the largest absolute error of every output, with both
  artifacts' graphs fed the same inputs: generated ones (as the export's parity gate makes them) and
  real ones (the reference's own chain on the images: pixels, prompt ids, encoder inputs, first step);
- first-step top-1 agreement: each artifact runs its whole chain, the argmax of the first decoder step;
- token agreement of whole generations (greedy and 3 beams): the fraction of identical tokens
  (position by position, over the longer of the two) and of identical sequences;
- size ratio (every file the manifest lists) and speed ratio (median end-to-end generate time).

Without --images, a few generated images (noise and rectangles) are used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from runtime.contract import GRAPH_NAMES as GRAPHS
from runtime.probes import sample_images

DEFAULT_TASKS = ("<CAPTION>", "<OD>", "<OCR>")
MODES = {"greedy": {"num_beams": 1}, "beams3": {"num_beams": 3}}


class ReportError(Exception):
    """Bad folders or artifacts that cannot be compared: one line for the user."""


# ---------------------------------------------------------------------------------------- loading


def load_pair(reference: Path, candidate: Path):
    """Open both artifacts; refuse a pair that does not come from the same checkpoint and contract."""
    from runtime import Florence2
    from runtime.errors import Florence2Error

    models = []
    for role, path in (("reference", reference), ("candidate", candidate)):
        try:
            models.append(Florence2.load(path))
        except Florence2Error as err:
            raise ReportError(f"--{role} {path}: {err}") from None
    ref, cand = (m.manifest for m in models)
    if ref.source.get("model") != cand.source.get("model"):
        raise ReportError(f"the artifacts come from different checkpoints: {ref.source.get('model')!r} (reference) "
                          f"vs {cand.source.get('model')!r} (candidate)")
    if ref.contract != cand.contract:
        differing = [f"{part} {getattr(ref.contract, part)} vs {getattr(cand.contract, part)}"
                     for part in ("dims", "tokens", "static") if getattr(ref.contract, part) != getattr(cand.contract, part)]
        raise ReportError(f"the artifacts have different graph contracts ({'; '.join(differing)}): "
                          "not the same checkpoint and shapes; export both the same way (static or not)")
    return models


# ----------------------------------------------------------------------------------------- inputs


def generated_cases(contract) -> dict[str, list[dict]]:
    """The export's parity-gate inputs for every graph (runtime/probes.py)."""
    from runtime.probes import graph_cases

    return {name: graph_cases(contract, name) for name in GRAPHS}


def chain(model, images: list, task: str) -> tuple[dict[str, list[dict]], np.ndarray]:
    """One artifact's whole chain on a batch, through the runtime's own encode and decoder step: the
    feeds each graph got (one entry per run), and the first step's logits."""
    from runtime.model import Request
    from runtime.prompts import build_prompt

    prompt = build_prompt(task, None, model.tasks)
    ids = model.tokenizer.encode(prompt)
    request = Request(list(images), [task] * len(images), [prompt] * len(images), [ids] * len(images))
    # The decode plan of Florence2._generate: a static artifact's graphs take one image at a time.
    parts = [[i] for i in range(len(images))] if model.contract.static else [list(range(len(images)))]
    feeds: dict[str, list[dict]] = {name: [] for name in GRAPHS}
    logits = []
    for indices in parts:
        record: dict = {}
        cross, mask = model.encode(request.part(indices), record=record)
        step = model.make_step(cross, mask)
        start = np.full((len(indices), 1), model.rules.decoder_start_token_id, dtype=np.int64)
        feeds["decoder"].append({k: v.copy() for k, v in step.feeds(start).items()})  # step() writes buffers in place
        logits.append(step(start))
        for name, value in record.items():
            feeds[name].append(value)
    return feeds, np.concatenate(logits)


# ------------------------------------------------------------------------------------- measuring


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else float(np.array_equal(a, b))


def compare_graphs(ref, cand, cases: dict[str, list[dict]]) -> dict[str, dict]:
    """Per graph: the least cosine and the largest abs error over its outputs and cases (both
    artifacts share one contract, so every case fits both)."""
    result = {}
    for name, feeds_list in cases.items():
        worst = {"min_cosine": 1.0, "max_abs_error": 0.0, "worst_output": None, "cases": 0}
        for feeds in feeds_list:
            want, got = ref.graphs[name].run(feeds), cand.graphs[name].run(feeds)
            for output, value in want.items():
                cos = cosine(got[output], value)
                err = float(np.max(np.abs(got[output].astype(np.float64) - value))) if value.size else 0.0
                if cos < worst["min_cosine"]:
                    worst.update(min_cosine=cos, worst_output=output)
                worst["max_abs_error"] = max(worst["max_abs_error"], err)
            worst["cases"] += 1
        result[name] = worst
    return result


def _valid_vocab(model) -> int:
    return model.manifest.dims.tokenizer_size


def image_fidelity(ref, cand, images: list, tasks: list[str]) -> tuple[dict[str, list[dict]], float]:
    """The reference chain's feeds per graph (for compare_graphs) and first-step top-1 agreement."""
    cases: dict[str, list[dict]] = {name: [] for name in GRAPHS}
    agree, total = 0, 0
    vocab = _valid_vocab(ref)
    for index, task in enumerate(tasks):
        feeds, want = chain(ref, images, task)
        _, got = chain(cand, images, task)
        agree += int(np.sum(want[:, :vocab].argmax(-1) == got[:, :vocab].argmax(-1)))
        total += len(images)
        for name in GRAPHS:  # the image graph once: it does not depend on the task
            if name != "vision_encoder" or index == 0:
                cases[name].extend(feeds[name])
    return cases, agree / total


def token_agreement(ref, cand, images: list, tasks: list[str], max_new_tokens: int) -> dict[str, dict]:
    result = {}
    for mode, options in MODES.items():
        same_tokens = positions = same_sequences = count = 0
        for task in tasks:
            want = ref.generate(images, task, max_new_tokens=max_new_tokens, **options)
            got = cand.generate(images, task, max_new_tokens=max_new_tokens, **options)
            for a, b in zip(want, got):
                same_tokens += sum(x == y for x, y in zip(a, b))
                positions += max(len(a), len(b))
                same_sequences += a == b
                count += 1
        result[mode] = {"token_agreement": same_tokens / positions, "sequence_agreement": same_sequences / count,
                        "sequences": count}
    return result


def artifact_bytes(model) -> int:
    """Every file the manifest lists: graphs and the files beside them (shared weights, tokenizer)."""
    from runtime.manifest import listed_files

    return sum(r.bytes for r in listed_files(model.manifest).values())


def shared_bytes(model) -> int:
    """Files beside the graphs other than the tokenizer: weights several graphs share (or external data)."""
    from runtime.manifest import TOKENIZER_NAME

    return sum(f.bytes for name, f in model.manifest.files.items() if name != TOKENIZER_NAME)


def speed(ref, cand, image, task: str, max_new_tokens: int, repeats: int) -> dict:
    """Median end-to-end generate() time of each (default generation options), runs interleaved so
    that background load hits both alike; one untimed warm-up each."""
    times = {"reference": [], "candidate": []}
    for run in range(repeats + 1):
        for role, model in (("reference", ref), ("candidate", cand)):
            started = time.perf_counter()
            model.generate(image, task, max_new_tokens=max_new_tokens)
            if run:
                times[role].append(time.perf_counter() - started)
    median = {role: float(np.median(t)) for role, t in times.items()}
    return {"reference_s": median["reference"], "candidate_s": median["candidate"],
            "ratio": median["candidate"] / median["reference"], "repeats": repeats, "task": task}


def build_report(reference: Path, candidate: Path, images: list | None = None, tasks: list[str] | None = None,
                 max_new_tokens: int = 20, repeats: int = 3) -> dict:
    ref, cand = load_pair(reference, candidate)
    images = images or sample_images()
    tasks = list(tasks or DEFAULT_TASKS)
    unknown = [t for t in tasks if t not in ref.tasks]
    if unknown:
        raise ReportError(f"unknown task {unknown[0]!r}; the artifact knows {', '.join(ref.tasks)}")
    image_cases, top1 = image_fidelity(ref, cand, images, tasks)
    generated = compare_graphs(ref, cand, generated_cases(ref.contract))
    on_images = compare_graphs(ref, cand, image_cases)
    sizes = (artifact_bytes(ref), artifact_bytes(cand))
    return {
        "reference": _describe(ref, reference, sizes[0]),
        "candidate": _describe(cand, candidate, sizes[1]),
        "images": len(images), "tasks": tasks, "max_new_tokens": max_new_tokens,
        "graphs": {name: {"generated": generated[name], "images": on_images[name],
                          "reference_bytes": ref.manifest.graphs[name].bytes,
                          "candidate_bytes": cand.manifest.graphs[name].bytes} for name in GRAPHS},
        "first_step_top1": top1,
        "tokens": token_agreement(ref, cand, images, tasks, max_new_tokens),
        "size_ratio": sizes[1] / sizes[0],
        "speed": speed(ref, cand, images[0], tasks[0], max_new_tokens, repeats),
    }


def _describe(model, path: Path, size: int) -> dict:
    m = model.manifest
    return {"path": str(path), "target": m.target, "precision": m.precision, "source": m.source.get("model"),
            "bytes": size, "shared_bytes": shared_bytes(model), "method": _method(m)}


def _method(manifest) -> str | None:
    """The quantization method in a few words: "calibrated (builtin, 8 images)", "dynamic"..."""
    q = manifest.quantization
    if q is None:
        return None
    return f"{q.method} ({q.calibration}, {q.count} images)" if q.calibration else q.method


# ------------------------------------------------------------------------------------------ output


def format_table(report: dict) -> str:
    ref, cand = report["reference"], report["candidate"]
    lines = [f"reference  {ref['path']}  ({ref['target']} {ref['precision']}, {ref['bytes'] / 1e6:.1f} MB)",
             f"candidate  {cand['path']}  ({_label(cand)}, {cand['bytes'] / 1e6:.1f} MB)",
             f"{report['images']} images x {len(report['tasks'])} tasks ({' '.join(report['tasks'])}), "
             f"max {report['max_new_tokens']} new tokens", "",
             f"{'graph':<15} {'file MB':>8} {'cos (generated)':>16} {'max err':>9} {'cos (images)':>13} {'max err':>9}"]
    for name, g in report["graphs"].items():
        lines.append(f"{name:<15} {g['candidate_bytes'] / 1e6:8.1f} {_cell(g['generated'])} {_cell(g['images'], 13)}")
    if cand["shared_bytes"]:
        lines.append(f"{'shared files':<15} {cand['shared_bytes'] / 1e6:8.1f}   (weights stored once for several graphs)")
    tokens = report["tokens"]
    lines += ["",
              f"first-step top-1 agreement   {report['first_step_top1']:.3f}",
              *(f"{mode:<8} tokens identical {t['token_agreement']:.3f}   sequences identical "
                f"{t['sequence_agreement']:.3f} ({t['sequences']})" for mode, t in tokens.items()),
              f"size       {report['size_ratio']:.3f}x  ({cand['bytes'] / 1e6:.1f} MB / {ref['bytes'] / 1e6:.1f} MB, every file)",
              f"speed      {report['speed']['ratio']:.3f}x  (median generate {report['speed']['candidate_s']:.3f} s / "
              f"{report['speed']['reference_s']:.3f} s, {report['speed']['task']})"]
    return "\n".join(lines)


def _label(side: dict) -> str:
    method = side.get("method")
    return f"{side['target']} {side['precision']}" + (f" {method}" if method else "")


def compare_table(reports: list[dict]) -> str:
    """Candidates side by side against their common reference: per graph the least cosine on the
    reference's own image chain, then top-1 and token agreement, size and speed."""
    heads = [f"[{i}]" for i in range(1, len(reports) + 1)]
    lines = [f"{h} {r['candidate']['path']}  ({_label(r['candidate'])})" for h, r in zip(heads, reports)]
    lines += ["", f"{'cosine (images)':<22}" + "".join(f"{h:>11}" for h in heads)]
    for name in reports[0]["graphs"]:
        lines.append(f"{name:<22}" + "".join(f"{r['graphs'][name]['images']['min_cosine']:>11.6f}" for r in reports))
    rows = [("first-step top-1", lambda r: r["first_step_top1"])]
    rows += [(f"{mode} tokens identical", lambda r, m=mode: r["tokens"][m]["token_agreement"]) for mode in MODES]
    rows += [("size ratio", lambda r: r["size_ratio"]), ("speed ratio", lambda r: r["speed"]["ratio"])]
    lines += [f"{label:<22}" + "".join(f"{value(r):>11.3f}" for r in reports) for label, value in rows]
    return "\n".join(lines)


def _cell(g: dict, width: int = 16) -> str:
    if "skipped" in g:
        return f"{'skipped':>{width}} {'':>9}"
    return f"{g['min_cosine']:>{width}.6f} {g['max_abs_error']:>9.2e}"


def build_parser() -> argparse.ArgumentParser:
    from runtime.cli import OneLineParser

    parser = OneLineParser(prog="python -m quantize.report",
                           description="Compare a reduced-precision artifact with its fp32 reference.")
    parser.add_argument("--reference", type=Path, required=True, help="the fp32 artifact folder")
    parser.add_argument("--candidate", type=Path, nargs="+", required=True,
                        help="the artifact folder(s) to judge, each against the same reference")
    parser.add_argument("--images", nargs="+", type=Path, help="image files (default: 3 generated images)")
    parser.add_argument("--tasks", nargs="+", help=f"task tokens (default: {' '.join(DEFAULT_TASKS)})")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="per generation (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate() runs per artifact (default 3)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file ('-': stdout only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.errors import Florence2Error
    from runtime.images import load_image

    try:
        if args.max_new_tokens < 1 or args.repeats < 1:
            raise ReportError("--max-new-tokens and --repeats must be at least 1")
        images = [load_image(path) for path in args.images] if args.images else None
        reports = [build_report(args.reference, candidate, images, args.tasks, args.max_new_tokens, args.repeats)
                   for candidate in args.candidate]
    except (ReportError, Florence2Error) as err:
        print(f"quantize.report: error: {err}", file=sys.stderr)
        return 2
    report = reports[0] if len(reports) == 1 else {"reports": reports}  # one candidate: the JSON as before
    text = json.dumps(report, indent=2)
    if args.json and str(args.json) == "-":
        print(text)
        return 0
    print("\n\n".join(format_table(r) for r in reports))
    if len(reports) > 1:
        print("\n" + compare_table(reports))
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
