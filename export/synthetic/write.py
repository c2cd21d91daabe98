"""Write held-out synthetic scenes as PNG files with their ground truth, to try a model on.

    python -m export.synthetic.write --out scenes/ --count 4            # scene-0000.png ... + truth.jsonl
    python -m runtime --model florence2-embedded-tiny-onnx scenes/ --task "<OD>"

Scenes come from the held-out stream (seed 1000 unless --seed; training uses 0). `truth.jsonl` holds
one line per file: its shapes (kind, colour, box), its text lines (text, box), and every task's target
as Florence-2 writes it. Torch-free: needs only numpy and Pillow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .scenes import LEVELS, make_scene
from .score import HELDOUT_SEED


def truth_record(name: str, scene) -> dict:
    return {"file": name, "seed": scene.seed, "index": scene.index, "level": scene.level, "size": list(scene.size),
            "shapes": [{"kind": s.kind, "colour": s.colour, "box": [round(v, 2) for v in s.box]} for s in scene.shapes],
            "lines": [{"text": line.text, "box": [round(v, 2) for v in line.box]} for line in scene.lines],
            "targets": {e.task: {"text": e.text, "target": e.target} for e in scene.examples()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.synthetic.write", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created; existing files are kept)")
    parser.add_argument("--count", type=int, default=4, help="scenes (default 4)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help=f"scene stream (default {HELDOUT_SEED})")
    parser.add_argument("--level", type=int, default=3, choices=sorted(LEVELS), help="curriculum level (default 3)")
    parser.add_argument("--size", type=int, default=128, help="side in pixels (default 128, the shipped model's)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 32:
        parser.error(f"expected --count >= 1 and --size >= 32; got {args.count} and {args.size}")
    args.out.mkdir(parents=True, exist_ok=True)
    truth_path = args.out / "truth.jsonl"
    names = [f"scene-{index:04d}.png" for index in range(args.count)]
    taken = [n for n in [*names, truth_path.name] if (args.out / n).exists()]
    if taken:  # never overwrite what this command did not just write
        parser.error(f"{args.out} already holds {taken[0]}; choose an empty --out")
    records = []
    for index, name in enumerate(names):
        scene = make_scene(args.seed, index, args.level, (args.size, args.size))
        scene.image.save(args.out / name)
        records.append(truth_record(name, scene))
    truth_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {args.count} scenes and {truth_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
