"""`python -m runtime`: run an artifact on images, folders and PDFs; one JSON record per item.

    python -m runtime --model ARTIFACT scans/ report.pdf --task "<OCR>" [--output results.jsonl]

Without --output, stdout carries only JSON lines (runtime/records.py): `{"image", "task", "result",
"seconds", "image_size"}` for an answer, `{"image", "task", "error"}` for an item that failed (also
told on stderr as `runtime: error: ...`). With --output, the records go to a resumable results file
(runtime/batch/results.py) instead. Progress and the summary line go to stderr.
Exit status: 0 all items answered, 1 some item failed, 2 bad arguments, artifact or output (nothing
run), 130 interrupted (Ctrl-C; 143 on SIGTERM): the same command resumes.

The job itself lives in runtime/batch/; this module is the argument layer.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
import warnings
from pathlib import Path

from .errors import Florence2Error

PROG = "runtime"


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


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


# (flag, generation option, type, help): the generation overrides the CLI offers.
GENERATION_FLAGS = (
    ("--num-beams", "num_beams", _positive_int, "beam count (default: the artifact's own)"),
    ("--max-new-tokens", "max_new_tokens", _positive_int, "token limit (default: the artifact's own)"),
    ("--min-new-tokens", "min_new_tokens", _non_negative_int, "tokens before EOS is allowed (default: the artifact's)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"python -m {PROG}", description="Run an exported Florence-2 artifact on images, "
                           "folders and PDFs: one JSON record per item on stdout, or in a resumable results file "
                           "with --output. Exit 1 if any item failed, 2 on bad arguments, 130 when interrupted.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, PDFs (one item per page), multi-page TIFFs (one per frame), folders")
    parser.add_argument("--model", required=True, type=Path, help="artifact folder written by `python -m export`")
    parser.add_argument("--task", required=True, help='task token, e.g. "<OD>", "<CAPTION>", "<OCR_WITH_REGION>"')
    parser.add_argument("--text", help="text input of the tasks that take one (grounding, segmentation, regions)")
    for flag, _, kind, text in GENERATION_FLAGS:
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--ids", action="store_true", help="also record the generated token ids of each item")
    parser.add_argument("--device", default="cpu", help="cpu, gpu, npu or auto; ane or all for coreml artifacts (default: cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="items per model call (default: 1)")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("-r", "--recursive", action="store_true", help="also take the files of subfolders")
    inputs.add_argument("--dpi", type=_positive_number, default=200.0, help="PDF rendering resolution (default: 200)")
    inputs.add_argument("--max-pixels", type=_positive_int, default=None,
                        help="an image or page with more pixels fails alone (default: 100000000)")
    inputs.add_argument("--exif-transpose", action="store_true",
                        help="turn photos upright by their EXIF orientation (off by default, as in transformers)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("-o", "--output", type=Path, metavar="FILE",
                         help="results file (JSON lines with a header); the same command again resumes it")
    outputs.add_argument("--restart", action="store_true", help="start --output over instead of resuming it")
    outputs.add_argument("--annotate", type=Path, metavar="DIR", help="also write each image with its answer drawn on it")
    outputs.add_argument("--text-dir", type=Path, metavar="DIR", help="also write the text of each item (OCR tasks)")
    outputs.add_argument("--searchable-pdf", type=Path, metavar="DIR",
                         help="with <OCR_WITH_REGION>: write each PDF and image with an invisible, searchable text layer")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary; errors only")
    return parser


def job_options(args):
    """The parsed command line as JobOptions (checked there, in one place)."""
    from .batch.job import JobOptions
    from .batch.sources import DEFAULT_MAX_PIXELS, SourceOptions

    generation = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, _, _ in GENERATION_FLAGS}
    source = SourceOptions(dpi=args.dpi, exif_transpose=args.exif_transpose,
                           max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels)
    return JobOptions(task=args.task, text=args.text, generation={k: v for k, v in generation.items() if v is not None},
                      batch_size=args.batch_size, source=source, output=args.output, restart=args.restart,
                      annotate=args.annotate, text_dir=args.text_dir, searchable_pdf=args.searchable_pdf, ids=args.ids)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # Backend warnings (e.g. an accelerator falling back to CPU) matter, but not their source line.
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the job stops cleanly), with its own exit status."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _open_job(args):
    """Scan, load, check and open everything that can fail for a reason other than one item."""
    from .batch.items import scan
    from .batch.job import Job
    from .model import Florence2

    options = job_options(args)
    items = scan(args.inputs, recursive=args.recursive)  # a PDF without the pdf extra: JobError here
    model = Florence2.load(args.model, device=args.device)
    job = Job(model, items, options)
    job.open()
    return job


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if hasattr(signal, "SIGTERM") else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    try:
        job = _open_job(args)
    except Florence2Error as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    try:
        summary = job.run(progress=not args.quiet and (args.progress or sys.stderr.isatty()))
    finally:
        job.close()
    if not args.quiet:
        print(summary.line(), file=sys.stderr, flush=True)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0
