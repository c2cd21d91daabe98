"""`python -m runtime.conformance ARTIFACT`: this runtime and the artifact's graphs against the
artifact's conformance vectors (runtime/vectors.py), the same file a native port checks itself with.

    python -m runtime.conformance ARTIFACT [--vectors FILE] [--graphs ort|onnx] [--device cpu]

Prints one line per check (`ok  ` or `FAIL`, the sample, what was checked; on failure the expected
and the actual) and a summary. Exit 0: every check passed; 1: one failed; 2: the artifact or the
vectors cannot be read (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, Florence2Error
from .generation import GenerationOptions
from .vectors import VECTORS_NAME, image_from_base64, measure, read_vectors

PROG = "runtime.conformance"


@dataclass(frozen=True)
class Check:
    sample: str
    what: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.sample:<12} {self.what}" + (f": {self.detail}" if self.detail else "")


def _same(sample: str, what: str, want, got) -> Check:
    return Check(sample, what, want == got, "" if want == got else f"expected {_short(want)}, got {_short(got)}")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."


def graph_files(manifest, kind: str) -> dict[str, dict]:
    """{graph: {"file", "sha256"}} of the graphs of `kind` ("ort" or "onnx") an artifact runs."""
    records = {name: (g.variants["ort"] if kind == "ort" else g) for name, g in manifest.graphs.items()}
    return {name: {"file": r.file, "sha256": r.sha256} for name, r in records.items()}


def check_sample(model, sample: dict, vectors: dict, table: list[bytes] | None) -> list[Check]:
    name, tol = sample["name"], vectors["tolerances"]
    options = {mode: GenerationOptions(**values) for mode, values in vectors["options"].items()}
    image = image_from_base64(sample["image_png"])
    got, logits = measure(model, image, sample["task"], options, vectors["top_k"])
    checks = [_same(name, "resize (uint8 sha256)", sample["resized"]["sha256"], got["resized"]["sha256"])]
    want_px, got_px = sample["pixel_values"], got["pixel_values"]
    worst = max(abs(a - b) for key in ("mean", "std") for a, b in zip(want_px[key], got_px[key]))
    exact = want_px["sha256"] == got_px["sha256"]
    checks.append(Check(name, "pixel_values", exact and worst <= tol["pixel_stats"],
                        "" if exact else f"not bit-exact; stats differ by {worst:.3g} (tolerance {tol['pixel_stats']:g})"))
    declared = model.manifest.tasks[sample["task"]].prompt_ids
    checks.append(_same(name, "prompt_ids", sample["prompt_ids"], got["prompt_ids"]))
    if declared is not None:
        checks.append(_same(name, "manifest prompt_ids", sample["prompt_ids"], list(declared)))
    checks.append(_first_step(name, sample["first_step"], logits, tol))
    for mode in options:
        want, have = sample[mode], got[mode]
        checks.append(_same(name, f"{mode}.ids", want["ids"], have["ids"]))
        checks.append(_same(name, f"{mode}.text", want["text"], have["text"]))
        checks.append(_same(name, f"{mode}.answer", want["answer"], json.loads(json.dumps(have["answer"]))))
        if table is not None:
            from .token_bytes import decode_bytes

            checks.append(_same(name, f"{mode}.token_bytes text", want["text"], decode_bytes(table, want["ids"])))
    return checks


def _first_step(name: str, want: dict, logits, tol: dict) -> Check:
    """Our logit of every stored id within tolerance, and our top-1 the stored top-1 (unless the
    stored runner-up is within tolerance of it: then either may win)."""
    bound = lambda v: tol["logits_atol"] + tol["logits_rtol"] * abs(v)  # noqa: E731
    ids, values = want["ids"], want["logits"]
    worst = max(abs(float(logits[i]) - v) for i, v in zip(ids, values))
    if any(abs(float(logits[i]) - v) > bound(v) for i, v in zip(ids, values)):
        return Check(name, "first_step", False, f"logits differ by up to {worst:.3g} (tolerance {bound(values[0]):.3g})")
    top = int(logits.argmax())
    tied = len(values) > 1 and values[0] - values[1] <= bound(values[0])
    if top != ids[0] and not (tied and top in ids[:2]):
        return Check(name, "first_step", False, f"top-1 id expected {ids[0]}, got {top}")
    return Check(name, "first_step", True, f"logits within {worst:.2g}" if worst else "")


def run_checks(folder: Path, vectors_path: Path | None = None, graphs: str | None = None,
               device: str = "cpu") -> tuple[list[Check], str]:
    """Every check of the vectors on the artifact in `folder`; also the graph format used."""
    from .manifest import read_manifest
    from .model import Florence2
    from .token_bytes import read_token_bytes

    manifest = read_manifest(folder)
    if vectors_path is None:
        if manifest.conformance is None:
            raise ArtifactError(f"{folder} carries no conformance vectors: export it with --conformance (or --mobile)")
        vectors_path = folder / manifest.conformance
    vectors = read_vectors(vectors_path)
    kind = graphs or vectors["graphs"]["format"]
    if kind not in ("ort", "onnx"):
        raise ArtifactError(f"expected --graphs ort or onnx, got {kind!r}")
    model = Florence2.load(folder, device=device, verify=False, prefer_ort=kind == "ort")  # verified just above
    table = read_token_bytes(folder / manifest.mobile.token_bytes) if manifest.mobile else None
    checks = []
    if kind == vectors["graphs"]["format"]:  # vectors of the .ort graphs still judge the .onnx ones, and back
        checks.append(_same("artifact", "graphs the vectors were made with", vectors["graphs"]["files"],
                            graph_files(manifest, kind)))
    for sample in vectors["samples"]:
        checks += check_sample(model, sample, vectors, table)
    return checks, kind


def main(argv: list[str] | None = None) -> int:
    from .cli import OneLineParser

    parser = OneLineParser(prog=f"python -m {PROG}", description="Check the runtime against an artifact's conformance vectors.")
    parser.add_argument("artifact", type=Path, help="artifact folder written by `python -m export`")
    parser.add_argument("--vectors", type=Path, help=f"vector file (default: the artifact's own {VECTORS_NAME})")
    parser.add_argument("--graphs", choices=("ort", "onnx"), help="graph files to run (default: those the vectors were made with)")
    parser.add_argument("--device", default="cpu", help="cpu (default), gpu, npu or auto")
    args = parser.parse_args(argv)
    try:
        checks, kind = run_checks(args.artifact, args.vectors, args.graphs, args.device)
    except (Florence2Error, ValueError) as err:  # OptionError: a bad option in the vectors
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    samples = len({c.sample for c in checks} - {"artifact"})
    print(f"conformance: {len(checks) - failed} passed, {failed} failed ({samples} samples, {kind} graphs of {args.artifact})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
