"""Checking --mobile / --conformance before any heavy import (the CLI refuses a bad combination in
a second): the options alone, no torch, no onnxruntime."""

from __future__ import annotations

from .errors import ExportError


def check_mobile_options(target, options: dict) -> tuple[bool, bool]:
    """(mobile, conformance): --mobile for onnx only; vectors need a backend that runs here."""
    mobile = bool(options.get("mobile"))
    conformance = mobile if options.get("conformance") is None else bool(options["conformance"])
    if mobile and "mobile" not in target.options:
        raise ExportError(f"--mobile is for --target onnx (ONNX Runtime Mobile); not {target.name}")
    if conformance and target.verify is not None:
        raise ExportError(f"--conformance runs the artifact, and {target.name} graphs cannot run here: "
                          "export --target onnx --mobile of the same checkpoint for vectors")
    return mobile, conformance
