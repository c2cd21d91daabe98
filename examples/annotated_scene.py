"""The README's picture: an artifact's answers on held-out synthetic scenes, drawn, one row per scene.

    python examples/annotated_scene.py --model florence2-embedded-tiny-onnx --out docs/trained-default.png

Each row: the scene, then <OD>, <OCR_WITH_REGION> and <REFERRING_EXPRESSION_SEGMENTATION> (asked about
the scene's referent shape), drawn by `runtime.annotate` on the scene scaled up (nearest neighbour, so
the pixels the model saw stay visible). Also prints every answer with the ground truth next to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("<OD>", "<OCR_WITH_REGION>", "<REFERRING_EXPRESSION_SEGMENTATION>")


def scaled(answer, factor: float):
    """An answer's coordinates multiplied by `factor` (the drawing is bigger than the scene)."""
    if isinstance(answer, dict):
        return {k: scaled(v, factor) if k in ("bboxes", "quad_boxes", "polygons") else v for k, v in answer.items()}
    if isinstance(answer, list):
        return [scaled(v, factor) for v in answer]
    return answer * factor if isinstance(answer, (int, float)) else answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="an artifact folder")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--indices", default="0,1,2", help="held-out scene indices, one row each (default 0,1,2)")
    parser.add_argument("--scale", type=int, default=3, help="drawing scale (default 3)")
    args = parser.parse_args(argv)

    from PIL import Image

    from export.synthetic import score
    from export.synthetic.scenes import caption, make_scene
    from runtime import Florence2
    from runtime.annotate import annotate

    model = Florence2.load(args.model)
    size = score._image_size(args.model)
    rows = []
    for index in (int(i) for i in args.indices.split(",")):
        scene = make_scene(score.HELDOUT_SEED, index, 3, size)
        big = scene.image.resize((size[0] * args.scale, size[1] * args.scale), Image.NEAREST)
        panels = [big]
        print(f"scene {index}: truth caption {caption(scene.shapes)!r}, "
              f"text {[line.text for line in scene.lines]}, referent {scene.shapes[scene.referent].phrase!r}")
        for task in ("<CAPTION>", *TASKS):
            text = score.task_input(scene, task)
            answer = model(scene.image, task, text)[task]
            print(f"  {task}{'' if text is None else ' ' + repr(text)}: {answer}")
            if task != "<CAPTION>":
                panels.append(annotate(big, scaled(answer, args.scale)))
        rows.append(panels)
    width, height = rows[0][0].size
    gap = 4
    sheet = Image.new("RGB", (len(rows[0]) * (width + gap) - gap, len(rows) * (height + gap) - gap), "white")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            sheet.paste(panel, (c * (width + gap), r * (height + gap)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
