"""Held-out accuracy of one checkpoint by target and precision: the table in the README.

    python examples/accuracy.py                                   # the shipped embedded:tiny, 500 scenes
    python examples/accuracy.py --scenes 100 --rows onnx:fp32,onnx:int8 --cache /tmp/acc

Exports the checkpoint once per row (into `--cache`, reused when its manifest is already there),
runs transformers' generate() on the checkpoint itself and `runtime.Florence2` on every artifact
over the same held-out scenes (`export.synthetic.score`: a seed never used in training), and prints
task-level scores per row plus "same": the share of (scene, task) answers equal to transformers'
fp32 answer, parsed. An fp32 artifact should show same 1.000; a quantized one says how far it is.
Rows: `target:precision`, with `int8-cal` for calibrated int8 (`--calibration builtin`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROWS = ("onnx:fp32", "onnx:fp16", "onnx:int8", "onnx:int8-cal", "onnx:int4",
                "openvino:fp32", "openvino:fp16", "openvino:bf16", "openvino:int8", "openvino:int8-cal",
                "openvino:int4")
COLUMNS = (("od_f1", "OD F1"), ("ocr_exact", "OCR exact"), ("ocr_cer", "OCR CER"), ("ocr_region_f1", "OCR-region F1"),
           ("caption_exact", "caption exact"), ("grounding_f1", "grounding F1"), ("mask_iou", "mask IoU"))


def parse_rows(text: str) -> list[tuple[str, str]]:
    rows = []
    for item in text.split(","):
        target, _, precision = item.strip().partition(":")
        if target not in ("onnx", "openvino") or precision not in ("fp32", "fp16", "bf16", "int8", "int8-cal", "int4"):
            raise SystemExit(f"accuracy: error: bad row {item!r}; expected target:precision, e.g. onnx:int8 "
                             "(targets onnx, openvino; precisions fp32 fp16 bf16 int8 int8-cal int4)")
        rows.append((target, precision))
    return rows


def export_row(model: str | None, target: str, precision: str, folder: Path) -> Path:
    if (folder / "manifest.json").is_file():
        return folder
    from export.pipeline import run_export

    options = {"calibration": "builtin"} if precision == "int8-cal" else {}
    print(f"exporting {target} {precision} -> {folder}", flush=True)
    run_export(model, target, folder, precision=precision.replace("-cal", ""), **options)
    return folder


def recording(run, answers: list):
    """The runner, keeping every answer in order (scenes, then tasks, as `evaluate` asks)."""
    def wrapped(scenes, task, texts):
        out = run(scenes, task, texts)
        answers.extend(json.dumps(a, sort_keys=True) for a in out)
        return out
    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped embedded:tiny weights)")
    parser.add_argument("--scenes", type=int, default=500, help="held-out scenes (default 500)")
    parser.add_argument("--level", type=int, default=3, help="scene level (default 3, the final one)")
    parser.add_argument("--num-beams", type=int, help="default: the checkpoint's generation config")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="target:precision list (default: all)")
    parser.add_argument("--cache", type=Path, default=Path("accuracy-artifacts"), help="artifact folder cache")
    parser.add_argument("--json", type=Path, help="also write every row's scores here")
    args = parser.parse_args(argv)
    rows = parse_rows(args.rows)

    import logging

    from export.embedded import TRAINED_WEIGHTS
    from export.synthetic import score

    logging.basicConfig(level=logging.WARNING)
    checkpoint = Path(args.model) if args.model else TRAINED_WEIGHTS
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"accuracy: error: {checkpoint} is not a checkpoint folder (no config.json)")
    scenes = score.held_out(args.scenes, score.HELDOUT_SEED, args.level, score._image_size(checkpoint))
    results = []

    def measure(name: str, run) -> dict:
        answers: list = []
        tally = score.evaluate(recording(run, answers), scenes)
        return {"name": name, "answers": answers, "seconds": tally.seconds, **tally.scores()}

    reference = measure("transformers fp32", score.transformers_runner(checkpoint, args.num_beams))
    results.append(reference)
    print(f"transformers fp32: {score.format_scores({k: reference[k] for k, _ in COLUMNS})}", flush=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    for target, precision in rows:
        folder = export_row(args.model, target, precision, args.cache / f"{target}-{precision}")
        started = time.perf_counter()
        result = measure(f"{target} {precision}", score.runtime_runner(folder, args.num_beams))
        result["seconds"] = time.perf_counter() - started
        results.append(result)
        print(f"{result['name']}: {score.format_scores({k: result[k] for k, _ in COLUMNS})}", flush=True)

    print(f"\n{args.scenes} held-out scenes (seed {score.HELDOUT_SEED}, level {args.level}), "
          f"beams {args.num_beams or 'from the generation config'}; same = answers equal to transformers fp32\n")
    print("| row | " + " | ".join(title for _, title in COLUMNS) + " | same |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for result in results:
        same = sum(a == b for a, b in zip(result["answers"], reference["answers"])) / len(reference["answers"])
        result["same"] = same
        cells = [f"{result[key]:.3f}" for key, _ in COLUMNS]
        print(f"| {result['name']} | " + " | ".join(cells) + f" | {same:.3f} |")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "answers"} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
