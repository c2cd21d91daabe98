"""`python -m runtime.serve`: arguments, the model loaded once, then uvicorn.

Bad arguments, a missing extra or a bad artifact are one line on stderr and exit 2, before the port
opens: once /healthz answers, the model is loaded. SIGTERM (or Ctrl-C) stops taking connections,
answers every request already received (queued ones included), then exits (143 after SIGTERM: uvicorn
re-raises the signal once drained).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..cli import OneLineParser, _one_line_warning, _positive_int, _positive_number
from ..errors import Florence2Error
from .access import exposure_warning

PROG = "runtime.serve"
TOKEN_VARIABLE = "FLORENCE2_SERVE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"python -m {PROG}", description="Serve one Florence-2 artifact over HTTP "
                           "(POST /v1/predict, GET /v1/tasks, /v1/info, /healthz) and the kiosk page at /.")
    parser.add_argument("--model", required=True, type=Path, help="artifact folder written by `python -m export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--device", default="cpu", help="cpu, gpu, npu or auto (default: cpu)")
    parser.add_argument("--max-queue", type=_positive_int, default=16,
                        help="requests that may wait for the model; more get 503 with Retry-After (default: 16)")
    parser.add_argument("--max-batch", type=_positive_int, default=8,
                        help="waiting requests run as one batch, at most this many; 1 disables batching (default: 8)")
    parser.add_argument("--max-upload-mb", type=_positive_number, default=20.0,
                        help="larger request bodies get 413 (default: 20)")
    parser.add_argument("--max-beams", type=_positive_int, default=8, help="num_beams above this get 422 (default: 8)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE),
                        help=f"require 'Authorization: Bearer T' on /v1/* (default: ${TOKEN_VARIABLE}, else none)")
    parser.add_argument("--tls-cert", type=Path, help="certificate file (PEM): serve HTTPS (needs --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="private key file (PEM) of --tls-cert")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: info)")
    return parser


def _check(parser: argparse.ArgumentParser, args) -> None:
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0..65535, got {args.port}")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            parser.error(f"{flag}: {str(path)!r} is not a file")
    if args.token is not None and not args.token.strip():
        parser.error("--token: expected a non-empty token")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        import uvicorn

        from .app import ServiceOptions, create_app
    except ImportError as err:
        print(f"{PROG}: error: the service needs the serve extra ({err.name} is missing): "
              'pip install "florence2-edge[serve,onnx]"', file=sys.stderr)
        return 2
    warning = exposure_warning(args.host, args.token)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            from ..model import Florence2

            model = Florence2.load(args.model, device=args.device)
        except Florence2Error as err:
            print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
        options = ServiceOptions(max_queue=args.max_queue, max_batch=args.max_batch,
                                 max_upload_bytes=int(args.max_upload_mb * 2**20), max_beams=args.max_beams,
                                 token=args.token)
        app = create_app(model, options)
        scheme = "https" if args.tls_cert else "http"
        manifest = model.manifest
        print(f"{PROG}: {args.model} ({manifest.target} {manifest.precision}, {model.device}) on "
              f"{scheme}://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0
