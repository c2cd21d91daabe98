"""Check an exported artifact against transformers on your own images: same ids? how fast?

    python examples/compare_with_transformers.py --checkpoint CKPT --artifact DIR photo.jpg \
        [--task "<OD>"] [--text T] [--num-beams 1 3] [--max-new-tokens 20]

CKPT is the transformers-native checkpoint the artifact was exported from (folder or hub id). For each
image and beam count it prints both id lists' agreement and the wall time of each side, then exits
non-zero if any pair differs. Needs the export extra (torch, transformers); the artifact side runs
through the runtime only.
"""

from __future__ import annotations

import argparse
import sys
import time


def transformers_side(checkpoint: str):
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


def reference_ids(model, processor, image, prompt: str, padded: list[int], **options) -> list[int]:
    import torch

    inputs = processor(text=prompt, images=image, return_tensors="pt")
    with torch.no_grad():
        # Embedding rows past the tokenizer are padding: the runtime never picks them; say so here too.
        return model.generate(**inputs, suppress_tokens=padded or None, **options)[0].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--task", default="<CAPTION>")
    parser.add_argument("--text")
    parser.add_argument("--num-beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()

    from runtime import Florence2
    from runtime.images import load_image

    model = Florence2.load(args.artifact)
    reference, processor = transformers_side(args.checkpoint)
    dims = model.manifest.dims
    padded = list(range(dims.tokenizer_size, dims.vocab_size))
    mismatches = 0
    for path in args.images:
        image = load_image(path)
        for beams in args.num_beams:
            options = dict(num_beams=beams, max_new_tokens=args.max_new_tokens)
            began = time.perf_counter()
            want = reference_ids(reference, processor, image, args.task + (args.text or ""), padded, **options)
            reference_s = time.perf_counter() - began
            began = time.perf_counter()
            got = model.generate(image, args.task, args.text, **options)
            runtime_s = time.perf_counter() - began
            same = got == want
            mismatches += not same
            print(f"{path} {args.task} beams={beams}: {'identical' if same else 'DIFFERENT'} ids ({len(got)} tokens); "
                  f"transformers {reference_s:.2f} s, runtime {runtime_s:.2f} s")
            if not same:
                print(f"  transformers: {want}\n  runtime:      {got}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
