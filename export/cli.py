"""`python -m export`: argument parsing and user-facing errors (one line, exit 2; parity failure exit 1;
interrupted: 130 for SIGINT, 143 for SIGTERM, after removing what the export had started to write)."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from runtime.cli import OneLineParser, _positive_int

from .calibration_options import check_calibration
from .destination import check_destination, resolve_output
from .errors import ExportError, ParityError
from .mobile_options import check_mobile_options
from .targets import PRECISIONS, TARGETS


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m export", description="Export a Florence-2 checkpoint to split, validated graphs.")
    parser.add_argument("--model", help="checkpoint folder or hub id, transformers-native or original Microsoft "
                        "layout (detected; its code is never run); "
                        "default: embedded:tiny, the small checkpoint shipped with the kit, trained on synthetic "
                        "scenes of shapes and text; embedded:random-tiny, embedded:base, embedded:large have "
                        "random weights, for shape and speed work)")
    parser.add_argument("--target", required=True, help=f"one of: {', '.join(TARGETS)}")
    parser.add_argument("--output", type=Path, help="artifact folder (default: ./florence2-<model>-<target>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--opset", type=int, help="ONNX opset (onnx target; default 18)")
    precision = parser.add_mutually_exclusive_group()
    for name in PRECISIONS:
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                               help=f"write {name} graphs (where the target can; default: the target's own, "
                                    "fp32 for onnx and openvino, fp16 for coreml)")
    parser.add_argument("--calibration", metavar="DIR|builtin",
                        help="with --int8 (onnx, openvino): calibrated int8 of the vision tower and the encoder, "
                             "activation ranges measured on the images in DIR (sorted, up to --calibration-count) "
                             "or on generated sample images ('builtin'); the decoder keeps dynamic/weight-only int8")
    parser.add_argument("--calibration-count", type=_positive_int, metavar="N",
                        help="--calibration: most images used (default 32 from a folder, 8 builtin)")
    parser.add_argument("--static", action="store_true",
                        help="fixed shapes for NPUs: batch 1, padded prompt, fixed KV buffers (openvino, onnx; coreml always)")
    parser.add_argument("--prompt-bucket", type=_positive_int, help="--static: prompt tokens, padded (default 64)")
    parser.add_argument("--max-decode", type=_positive_int, help="--static: KV buffer slots = most generated tokens (default 256)")
    parser.add_argument("--static-beams", type=_positive_int,
                        help="--static: decoder rows = most beams (default: the checkpoint's num_beams)")
    parser.add_argument("--mobile", action="store_true",
                        help="onnx: also write each graph in ORT format (.ort, for ONNX Runtime Mobile), the operators "
                             "config of a minimal ORT build and an id -> token-bytes table (docs/mobile.md)")
    parser.add_argument("--conformance", action=argparse.BooleanOptionalAction, default=None,
                        help="write test vectors a port checks itself against (default: on with --mobile)")
    parser.add_argument("--tasks", type=Path, metavar="TASKS_JSON",
                        help='declare extra tasks of a fine-tune, e.g. {"<MY_OD>": {"prompt": "Locate the widgets.", '
                             '"parse_type": "description_with_bboxes"}}; "{input}" in a prompt marks where text goes')
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    return parser


def _check_target(args) -> None:
    if args.target not in TARGETS:
        close = difflib.get_close_matches(args.target, TARGETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExportError(f"unknown target {args.target!r}; {hint}expected one of: {', '.join(TARGETS)}")
    target = TARGETS[args.target]
    if args.opset is not None and "opset" not in target.options:
        raise ExportError(f"--opset applies to the onnx target, not {args.target}")
    if args.precision is not None and args.precision not in target.precisions:
        reason = target.refused.get(args.precision, f"{args.target} writes {', '.join(target.precisions)}")
        raise ExportError(f"--{args.precision} is not available for --target {args.target}: {reason}")
    if args.static and "static" not in target.options:
        raise ExportError(f"--static is not available for --target {args.target}")
    for flag, value in (("--prompt-bucket", args.prompt_bucket), ("--max-decode", args.max_decode),
                        ("--static-beams", args.static_beams)):
        if value is not None and not (args.static or target.static):
            raise ExportError(f"{flag} applies to --static exports; add --static")
    check_mobile_options(target, {"mobile": args.mobile, "conformance": args.conformance})
    if args.opset is not None and not 17 <= args.opset <= 23:
        raise ExportError(f"--opset {args.opset} is not supported: expected 17..23")


def read_tasks(path: Path | None) -> dict | None:
    """The --tasks file as a JSON object (validated in full by the export, against the checkpoint's tasks)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"--tasks {path}: no such file") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"--tasks {path}: not a readable JSON file ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ExportError(f'--tasks {path}: expected a JSON object {{"<TOKEN>": {{"prompt": ..., "parse_type": ...}}}}')
    return data


def default_output(model: str | None, target: str) -> Path:
    name = (model or "embedded:tiny").rstrip("/").replace("embedded:", "embedded-").split("/")[-1]
    return Path(f"florence2-{name}-{target}")


def quiet_libraries() -> None:
    """The exporter's and loaders' chatter (torchvision absent, progress bars) is not the user's concern;
    our own log says what happens. Done after their import: torch resets its loggers on import."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for noisy in ("torch", "torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir",
                  "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C: every staging and scratch folder is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        _check_target(args)
        calibration = check_calibration(args.calibration, args.calibration_count, args.target, args.precision)
        tasks = read_tasks(args.tasks)
        output = args.output or default_output(args.model, args.target)
        check_destination(resolve_output(output), args.overwrite)  # a refusal is instant (run_export checks again)
        from .pipeline import run_export  # heavy imports only once the arguments are good

        quiet_libraries()
        run_export(args.model, args.target, output, overwrite=args.overwrite, precision=args.precision,
                   opset=args.opset, static=args.static, prompt_bucket=args.prompt_bucket, max_decode=args.max_decode,
                   static_beams=args.static_beams, tasks=tasks, mobile=args.mobile, conformance=args.conformance,
                   calibration=calibration)
    except ParityError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing the artifact: a full disk, a file size limit, a folder gone read-only
        print(f"export: error: cannot write the artifact: {' '.join(str(err).split())}; nothing was written",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"export: {what}; {str(err) or 'nothing was written'}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    return 0
