"""`python -m runtime`: run an artifact on images and folders, one JSON line per image on stdout.

    python -m runtime --model ARTIFACT photo.jpg photos/ --task "<OD>" [--annotate out/]

stdout carries only JSON lines (runtime/records.py): `{"image", "task", "result", "seconds",
"image_size"}` for an answer, `{"image", "task", "error"}` for an image that cannot be read (also told
on stderr as `runtime: error: ...`).
Exit status: 0 all images answered, 1 some image failed, 2 bad arguments or artifact (nothing run).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
import warnings
from pathlib import Path

from .errors import Florence2Error
from .images import is_image_file, load_image
from .records import error_record, result_record

PROG = "runtime"


class UsageError(Florence2Error):
    """A bad command line: reported in one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a suggestion for a mistyped option), exit 2.
    Shared by `python -m export`."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            known = [o for action in self._actions for o in action.option_strings]
            hints = [difflib.get_close_matches(u.split("=")[0], known, n=1) for u in unknown]
            hint = "; ".join(f"did you mean {h[0]}?" for h in hints if h)
            message = f"unknown option {' '.join(unknown)}" + (f" ({hint})" if hint else "") + "; see --help"
        self.exit(2, f"{self.prog.split()[-1]}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"python -m {PROG}", description="Run an exported Florence-2 artifact on images. "
                     "Prints one JSON line per image; exit 1 if any image failed, 2 on bad arguments.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders whose image files are all run (not recursive)")
    parser.add_argument("--model", required=True, type=Path, help="artifact folder written by `python -m export`")
    parser.add_argument("--task", required=True, help='task token, e.g. "<OD>", "<CAPTION>", "<OCR_WITH_REGION>"')
    parser.add_argument("--text", help="text input of the tasks that take one (grounding, segmentation, regions)")
    parser.add_argument("--num-beams", type=_positive_int, help="beam count (default: the artifact's own)")
    parser.add_argument("--max-new-tokens", type=_positive_int, help="token limit (default: the artifact's own)")
    parser.add_argument("--ids", action="store_true", help="also print the generated token ids of each image")
    parser.add_argument("--device", default="cpu", help="cpu, gpu, npu or auto; ane or all for coreml artifacts (default: cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="images per batch (default: 1)")
    parser.add_argument("--annotate", type=Path, metavar="OUT_DIR",
                        help="also write each image with its answer drawn on it, as OUT_DIR/<stem>.png")
    return parser


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders become their image files, sorted by name. A missing path is a usage
    error (nothing runs), an unreadable file is a per-image error found later."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                print(f"{PROG}: warning: no image files in {name}", file=sys.stderr)
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise UsageError(f"no such image file or folder: {name}")
    if not paths:
        raise UsageError(f"no image files in {', '.join(inputs)}")
    return paths


def _emit(record: dict) -> None:
    # Flushed per line, so a consumer piping the output sees each image as soon as it is done.
    print(json.dumps(record), flush=True)


def _fail(path: Path, task: str, message: str) -> None:
    _emit(error_record(str(path), task, message))
    where = "" if str(path) in message else f"{path}: "  # load_image's messages already name it
    print(f"{PROG}: error: {where}{message}", file=sys.stderr, flush=True)


def _prepare(args):
    """Everything that can fail for a reason other than one image: artifact, task, text, options.
    Returns (model, generation overrides); raises Florence2Error (exit 2)."""
    from .model import Florence2
    from .prompts import build_prompt

    if args.annotate is not None and args.annotate.exists() and not args.annotate.is_dir():
        raise UsageError(f"--annotate expects a folder; {args.annotate} is a file")
    model = Florence2.load(args.model, device=args.device)
    build_prompt(args.task, args.text, model.tasks)  # unknown task or wrong text: before any image
    overrides = {name: value for name, value in
                 (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens)) if value is not None}
    try:
        model.defaults.replace(**overrides)
    except ValueError as err:
        # e.g. --max-new-tokens below the artifact's min_new_tokens
        raise UsageError(str(err)) from None
    if args.annotate is not None:
        args.annotate.mkdir(parents=True, exist_ok=True)
    return model, overrides


def _load_all(paths: list[Path], task: str) -> tuple[list[tuple[Path, object]], int]:
    """Decode every image up front, so a bad one is reported alone and never breaks a batch."""
    loaded, failed = [], 0
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except Florence2Error as err:
            _fail(path, task, str(err))
            failed += 1
    return loaded, failed


def _annotation_name(path: Path, used: set[str]) -> str:
    name = f"{path.stem}.png"
    if name in used:
        # a.jpg and a.png (or a.jpg from two folders) would overwrite each other's picture.
        name = f"{path.stem}-{len(used)}.png"
    used.add(name)
    return name


def _run_batches(model, loaded: list, args, overrides: dict) -> int:
    """Run the loaded images in batches, emit one line each; returns how many failed."""
    from .annotate import annotate

    failed, used_names = 0, set()
    for start in range(0, len(loaded), args.batch_size):
        batch = loaded[start : start + args.batch_size]
        began = time.perf_counter()
        try:
            results = model.run([image for _, image in batch], args.task, args.text, **overrides)
        except Florence2Error as err:
            for path, _ in batch:
                _fail(path, args.task, str(err))
            failed += len(batch)
            continue
        # A batch is one computation: each image is charged its share of the batch's time.
        seconds = (time.perf_counter() - began) / len(batch)
        for (path, image), run in zip(batch, results):
            result = run.answer[args.task]
            if args.annotate is not None:
                target = args.annotate / _annotation_name(path, used_names)
                try:
                    annotate(image, result).save(target, format="PNG")
                except OSError as err:
                    _fail(path, args.task, f"cannot write {target}: {err}")
                    failed += 1
                    continue
            _emit(result_record(str(path), args.task, result, seconds, run.image_size,
                                **({"ids": run.ids} if args.ids else {})))
    return failed


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # Backend warnings (e.g. an accelerator falling back to CPU) matter, but not their source line.
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            paths = expand_inputs(args.inputs)
            model, overrides = _prepare(args)
        except Florence2Error as err:
            print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        try:
            loaded, failed = _load_all(paths, args.task)
            failed += _run_batches(model, loaded, args, overrides)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
    return 1 if failed else 0
