"""The fidelity report: a candidate artifact (fp16, int8, int4, another target) against its fp32 reference.

    python -m quantize.report --reference fl2-base-onnx --candidate fl2-base-onnx-int8 \\
        [--images a.jpg b.png] [--tasks "<CAPTION>" "<OD>"] [--max-new-tokens 20] [--json report.json]

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

GRAPHS = ("vision_encoder", "embed_tokens", "encoder", "decoder")
DEFAULT_TASKS = ("<CAPTION>", "<OD>", "<OCR>")
MODES = {"greedy": {"num_beams": 1}, "beams3": {"num_beams": 3}}


class ReportError(Exception):
    """Bad folders or artifacts that cannot be compared: one line for the user."""


# ---------------------------------------------------------------------------------------- loading


def load_pair(reference: Path, candidate: Path):
    """Open both artifacts; refuse a pair that does not come from the same checkpoint and dims."""
    from runtime import Florence2
    from runtime.errors import Florence2Error

    models = []
    for role, path in (("reference", reference), ("candidate", candidate)):
        try:
            models.append(Florence2.load(path))
        except Florence2Error as err:
            raise ReportError(f"--{role} {path}: {err}") from None
    ref, cand = (m.manifest for m in models)
    for role, manifest, path in (("reference", ref, reference), ("candidate", cand, candidate)):
        if getattr(manifest, "static", None):
            raise ReportError(f"--{role} {path} is a static-shape (--static) artifact: the report compares "
                              "dynamic-shape artifacts; export the same model without --static to judge a precision")
    if ref.source.get("model") != cand.source.get("model"):
        raise ReportError(f"the artifacts come from different checkpoints: {ref.source.get('model')!r} (reference) "
                          f"vs {cand.source.get('model')!r} (candidate)")
    differing = sorted(k for k in set(ref.dims) | set(cand.dims) if ref.dims.get(k) != cand.dims.get(k))
    if differing or ref.tokens != cand.tokens:
        what = ", ".join(f"{k} {ref.dims.get(k)} vs {cand.dims.get(k)}" for k in differing) or "token ids"
        raise ReportError(f"the artifacts have different model dims ({what}): not the same checkpoint")
    return models


def generated_images(count: int = 3) -> list:
    """Noise plus a few rectangles, in a few sizes: different enough to steer a model differently."""
    from export.embedded import sample_image

    sizes = [(640, 480), (300, 500), (768, 768), (1024, 683)] * count
    return [sample_image(seed, size) for seed, size in zip(range(count), sizes)]


# ----------------------------------------------------------------------------------------- inputs


def _kv(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def _mask(lengths: list[int], total: int) -> np.ndarray:
    return (np.arange(total)[None, :] < np.array(lengths)[:, None]).astype(np.int64)


def generated_cases(dims: dict, seed: int = 0) -> dict[str, list[dict]]:
    """Inputs like the export's parity gate: batch 2, two prompt lengths, a padded row, decoder steps
    with an empty and a filled cache, 1 and 3 beams."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    layers, heads, head_dim = dims["decoder_layers"], dims["decoder_heads"], dims["head_dim"]
    full = [dims["image_tokens"] + n for n in (3, 9)]
    cases = {
        "vision_encoder": [{"pixel_values": normal(2, 3, *dims["image_size"])}],
        "embed_tokens": [{"input_ids": rng.integers(0, dims["tokenizer_size"], (2, n), dtype=np.int64)} for n in (3, 9)],
        "encoder": [{"inputs_embeds": normal(2, total, dims["d_model"]), "attention_mask": _mask([total, full[0]], total)}
                    for total in full],
        "decoder": [],
    }
    for beams, past in ((1, 0), (3, 5)):
        rows, total = 2 * beams, full[1]
        case = {"input_ids": rng.integers(0, dims["tokenizer_size"], (rows, 1), dtype=np.int64),
                "encoder_attention_mask": _mask([total, full[0]], total)}
        case.update({n: normal(rows, heads, past, head_dim) for n in _kv("past", layers)})
        case.update({n: normal(2, heads, total, head_dim) for n in _kv("cross", layers)})
        cases["decoder"].append(case)
    return cases


def chain(model, images: list, task: str) -> tuple[dict[str, dict], np.ndarray]:
    """One artifact's whole chain on a batch: the feeds each graph got, and the first step's logits."""
    from runtime.prompts import build_prompt

    dims, s = model.manifest.dims, model.sessions
    pixels = model.preprocessor(images)
    features = s["vision_encoder"].run({"pixel_values": pixels})["image_features"]
    ids, prompt_mask = model.tokenizer.encode_batch([build_prompt(task, None, model.tasks)] * len(images))
    embeds = s["embed_tokens"].run({"input_ids": ids})["inputs_embeds"]
    mask = np.concatenate([np.ones(features.shape[:2], dtype=np.int64), prompt_mask], axis=1)
    encoder = {"inputs_embeds": np.concatenate([features, embeds], axis=1), "attention_mask": mask}
    cross = {k: v for k, v in s["encoder"].run(encoder).items() if k.startswith("cross.")}
    empty = np.zeros((len(images), dims["decoder_heads"], 0, dims["head_dim"]), dtype=np.float32)
    decoder = {"input_ids": np.full((len(images), 1), model.manifest.tokens["decoder_start"], dtype=np.int64),
               "encoder_attention_mask": mask, **{n: empty for n in _kv("past", dims["decoder_layers"])}, **cross}
    logits = s["decoder"].run(decoder)["logits"][:, -1, :]
    feeds = {"vision_encoder": {"pixel_values": pixels}, "embed_tokens": {"input_ids": ids},
             "encoder": encoder, "decoder": decoder}
    return feeds, logits


# ------------------------------------------------------------------------------------- measuring


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else float(np.array_equal(a, b))


def compare_graphs(ref, cand, cases: dict[str, list[dict]]) -> dict[str, dict]:
    """Per graph: the least cosine and the largest abs error over its outputs and cases."""
    result = {}
    for name, feeds_list in cases.items():
        worst = {"min_cosine": 1.0, "max_abs_error": 0.0, "worst_output": None, "cases": 0}
        try:
            for feeds in feeds_list:
                want, got = ref.sessions[name].run(feeds), cand.sessions[name].run(feeds)
                for output, value in want.items():
                    cos = cosine(got[output], value) if got[output].shape == value.shape else -1.0
                    err = float(np.max(np.abs(got[output].astype(np.float64) - value))) if value.size and cos > -1 else 0.0
                    if cos < worst["min_cosine"]:
                        worst.update(min_cosine=cos, worst_output=output)
                    worst["max_abs_error"] = max(worst["max_abs_error"], err)
                worst["cases"] += 1
        except Exception as err:  # a graph with other inputs (a static variant): say so, go on
            worst = {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
        result[name] = worst
    return result


def _valid_vocab(model) -> int:
    return model.manifest.dims.get("tokenizer_size") or model.manifest.dims["vocab_size"]


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
                cases[name].append(feeds[name])
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
    manifest = model.manifest
    return sum(g["bytes"] for g in manifest.graphs.values()) + sum(f["bytes"] for f in manifest.files.values())


def shared_bytes(model) -> int:
    """Files beside the graphs other than the tokenizer: weights several graphs share (or external data)."""
    from runtime.manifest import TOKENIZER_NAME

    return sum(f["bytes"] for name, f in model.manifest.files.items() if name != TOKENIZER_NAME)


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
    images = images or generated_images()
    tasks = list(tasks or DEFAULT_TASKS)
    unknown = [t for t in tasks if t not in ref.tasks]
    if unknown:
        raise ReportError(f"unknown task {unknown[0]!r}; the artifact knows {', '.join(ref.tasks)}")
    image_cases, top1 = image_fidelity(ref, cand, images, tasks)
    generated = compare_graphs(ref, cand, generated_cases(ref.manifest.dims))
    on_images = compare_graphs(ref, cand, image_cases)
    sizes = (artifact_bytes(ref), artifact_bytes(cand))
    return {
        "reference": _describe(ref, reference, sizes[0]),
        "candidate": _describe(cand, candidate, sizes[1]),
        "images": len(images), "tasks": tasks, "max_new_tokens": max_new_tokens,
        "graphs": {name: {"generated": generated[name], "images": on_images[name],
                          "reference_bytes": ref.manifest.graphs[name]["bytes"],
                          "candidate_bytes": cand.manifest.graphs[name]["bytes"]} for name in GRAPHS},
        "first_step_top1": top1,
        "tokens": token_agreement(ref, cand, images, tasks, max_new_tokens),
        "size_ratio": sizes[1] / sizes[0],
        "speed": speed(ref, cand, images[0], tasks[0], max_new_tokens, repeats),
    }


def _describe(model, path: Path, size: int) -> dict:
    m = model.manifest
    return {"path": str(path), "target": m.target, "precision": m.precision, "source": m.source.get("model"),
            "bytes": size, "shared_bytes": shared_bytes(model)}


# ------------------------------------------------------------------------------------------ output


def format_table(report: dict) -> str:
    ref, cand = report["reference"], report["candidate"]
    lines = [f"reference  {ref['path']}  ({ref['target']} {ref['precision']}, {ref['bytes'] / 1e6:.1f} MB)",
             f"candidate  {cand['path']}  ({cand['target']} {cand['precision']}, {cand['bytes'] / 1e6:.1f} MB)",
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


def _cell(g: dict, width: int = 16) -> str:
    if "skipped" in g:
        return f"{'skipped':>{width}} {'':>9}"
    return f"{g['min_cosine']:>{width}.6f} {g['max_abs_error']:>9.2e}"


def build_parser() -> argparse.ArgumentParser:
    from runtime.cli import OneLineParser

    parser = OneLineParser(prog="python -m quantize.report",
                           description="Compare a reduced-precision artifact with its fp32 reference.")
    parser.add_argument("--reference", type=Path, required=True, help="the fp32 artifact folder")
    parser.add_argument("--candidate", type=Path, required=True, help="the artifact folder to judge")
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
        report = build_report(args.reference, args.candidate, images, args.tasks, args.max_new_tokens, args.repeats)
    except (ReportError, Florence2Error) as err:
        print(f"quantize.report: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.json and str(args.json) == "-":
        print(text)
        return 0
    print(format_table(report))
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
