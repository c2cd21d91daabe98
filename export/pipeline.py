"""One export, start to finish: checkpoint -> staged folder -> graphs, each checked by the parity
gate as soon as it is written -> tokenizer and manifest -> folder moved into place."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from platforms import open_session
from runtime.manifest import Manifest, file_record

from .artifact import build_manifest, check_destination, source_record, staged_folder, write_tokenizer
from .checkpoint import Checkpoint, load_checkpoint
from .graphs import ModelDims, graph_specs
from .parity import check_graph, raise_on_failures, sample_cases
from .targets import TARGETS

log = logging.getLogger("export")
EMBEDDED_PREFIX = "embedded:"


def resolve_checkpoint(model: str | None, scratch: Path) -> Checkpoint:
    """`None` or `embedded:<preset>` builds a deterministic checkpoint offline; anything else loads."""
    if model is None or model.startswith(EMBEDDED_PREFIX):
        from .embedded import PRESETS, build_checkpoint

        preset = (model or "embedded:tiny")[len(EMBEDDED_PREFIX):]
        if preset not in PRESETS:
            from .errors import ExportError

            raise ExportError(f"unknown embedded checkpoint {model!r}; expected one of "
                              + ", ".join(EMBEDDED_PREFIX + p for p in PRESETS))
        log.info("building the embedded %s checkpoint (random weights, seed 0)", preset)
        checkpoint = load_checkpoint(str(build_checkpoint(scratch / preset, preset=preset)))
        checkpoint.source = EMBEDDED_PREFIX + preset
        return checkpoint
    return load_checkpoint(model)


def run_export(model: str | None, target: str, output: Path, overwrite: bool = False,
               precision: str | None = None, **options) -> Manifest:
    """Export `model` for `target` at `precision` (default: the target's first) into `output`.
    `options` are target-specific (opset...) and reach the target's writer unchanged."""
    spec_target = TARGETS[target]
    precision = precision or spec_target.precisions[0]
    check_destination(output, overwrite)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="florence2-edge-") as scratch:
        checkpoint = resolve_checkpoint(model, Path(scratch))
        dims = ModelDims.of(checkpoint.model)
        manifest = build_manifest(checkpoint, dims, target, precision, source_record(checkpoint.source))
        with staged_folder(output) as folder:
            results = []
            specs = graph_specs(dims)
            for index, spec in enumerate(specs, 1):
                results.append(_export_graph(spec, spec_target, checkpoint.model, dims, folder, manifest,
                                             f"[{index}/{len(specs)}]", precision, options))
            raise_on_failures(results)
            manifest.files.update(write_tokenizer(checkpoint.processor, folder))
            manifest.write(folder)
    size = sum(g["bytes"] for g in manifest.graphs.values()) / 1e6
    log.info("wrote %s (%.1f MB) in %.1f s", output, size, time.perf_counter() - started)
    return manifest


def _export_graph(spec, target, model, dims, folder: Path, manifest: Manifest, step: str, precision: str,
                  options: dict):
    started = time.perf_counter()
    path = folder / f"{spec.name}{target.suffix}"
    example = sample_cases(spec.name, dims)[-1]  # the last case has every dynamic axis > 1
    target.writer(spec, model, example, path, precision=precision, **options)
    session = open_session(target.name, path, device="cpu")
    parity = check_graph(spec, session, model, dims, precision=precision)
    record = file_record(path)
    manifest.graphs[spec.name] = {
        "file": path.name, **record,
        "inputs": {name: _io_record(example[name].dtype, axes) for name, axes in spec.inputs.items()},
        "outputs": {name: _io_record("float32", axes) for name, axes in spec.outputs.items()},
        "parity": parity.to_dict(),
    }
    verdict = "ok" if not parity.failures else "FAILED"
    log.info("%s %-15s %6.1f s %9.1f MB  max abs diff %s %s", step, spec.name, time.perf_counter() - started,
             record["bytes"] / 1e6, _diff_summary(parity), verdict)
    return parity


def _io_record(dtype, axes: dict[int, str]) -> dict:
    return {"dtype": str(dtype), "dynamic_axes": {str(axis): symbol for axis, symbol in axes.items()}}


def _diff_summary(parity) -> str:
    """The worst output against its tolerance, plus the logits on their own when they have one."""
    parts = []
    rest = {k: v for k, v in parity.max_abs_diff.items() if k not in parity.output_tolerances}
    if rest:
        parts.append(f"{max(rest.values()):.2e} (tol {parity.tolerance:.0e})")
    for name in parity.output_tolerances:
        if name in parity.max_abs_diff:
            parts.append(f"{name} {parity.max_abs_diff[name]:.2e} (tol {parity.output_tolerances[name]:.0e})")
    return ", ".join(parts)
