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
from .parity import cases_of, check_graph, raise_on_failures
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
    if spec_target.static:  # a target that only runs fixed shapes (coreml) gets them without --static
        options = {**options, "static": True}
    check_destination(output, overwrite)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="florence2-edge-") as scratch:
        checkpoint = resolve_checkpoint(model, Path(scratch))
        dims = ModelDims.of(checkpoint.model)
        manifest = build_manifest(checkpoint, dims, target, precision, source_record(checkpoint))
        with staged_folder(output) as folder:
            results = []
            specs = _graph_specs(dims, manifest, options)
            for index, spec in enumerate(specs, 1):
                results.append(_export_graph(spec, spec_target, checkpoint.model, dims, folder, manifest,
                                             f"[{index}/{len(specs)}]", precision, options))
            raise_on_failures(results)
            manifest.files.update(write_tokenizer(checkpoint.processor, folder))
            manifest.files.update(_side_files(folder, manifest))
            manifest.write(folder)
    weights = [g["weights"] for g in manifest.graphs.values() if "weights" in g]
    size = sum(r["bytes"] for r in [*manifest.graphs.values(), *weights, *manifest.files.values()]) / 1e6
    log.info("wrote %s (%.1f MB) in %.1f s", output, size, time.perf_counter() - started)
    return manifest


def _export_graph(spec, target, model, dims, folder: Path, manifest: Manifest, step: str, precision: str,
                  options: dict):
    started = time.perf_counter()
    path = folder / f"{spec.name}{target.suffix}"
    example = cases_of(spec, dims)[-1]  # the last case has every dynamic axis > 1
    written = target.writer(spec, model, example, path, precision=precision, **options)
    if target.verify:  # the backend cannot run here: the target checks what it can (export/coreml_check.py)
        parity = target.verify(spec, model, dims, written, precision=precision)
    else:
        session = open_session(target.name, path, device="cpu", **target.gate_session)
        parity = check_graph(spec, session, model, dims, precision=precision)
    record = file_record(path)  # a folder graph (.mlpackage): every file in it, with its sha256
    manifest.graphs[spec.name] = {
        "file": path.name, **record,
        "inputs": {name: _io_record(example[name].dtype, axes) for name, axes in spec.inputs.items()},
        "outputs": {name: _io_record("float32", axes) for name, axes in spec.outputs.items()},
        "parity": parity.to_dict(),
    }
    for kind, records in getattr(written, "io", {}).items():  # the writer's own I/O types and shapes
        for name, io in records.items():
            manifest.graphs[spec.name][kind][name].update(io)
    if target.weights_suffix:  # OpenVINO's .bin: checked at load like the graph file itself
        weights = path.with_suffix(target.weights_suffix)
        manifest.graphs[spec.name]["weights"] = {"file": weights.name, **file_record(weights)}
    size = record["bytes"] + manifest.graphs[spec.name].get("weights", {}).get("bytes", 0)
    verdict = "ok" if not parity.failures else "FAILED"
    summary = f"max abs diff {_diff_summary(parity)}" if parity.floor is None else \
        f"min cosine {min(parity.cosine.values()):.5f} (floor {parity.floor:g})"
    if getattr(parity, "note", None):  # checked without the backend (coreml on Linux): say what was
        summary += f" [{parity.note}]"
    log.info("%s %-15s %6.1f s %9.1f MB  %s %s", step, spec.name, time.perf_counter() - started,
             size / 1e6, summary, verdict)
    return parity


def _graph_specs(dims, manifest: Manifest, options: dict) -> list:
    """The dynamic graphs; with `static`, the fixed-shape ones (export/static_graphs.py), whose layout
    the manifest records for the runtime. Static rows = the checkpoint's default beam count."""
    if not options.get("static"):
        return graph_specs(dims)
    from .static_graphs import DEFAULT_MAX_DECODE, DEFAULT_PROMPT_BUCKET, StaticLayout, static_graph_specs

    given = lambda key, default: default if options.get(key) is None else options[key]  # noqa: E731
    layout = StaticLayout.checked(given("static_beams", manifest.generation.get("num_beams") or 1),
                                  given("prompt_bucket", DEFAULT_PROMPT_BUCKET), given("max_decode", DEFAULT_MAX_DECODE),
                                  dims, manifest.dims["max_positions"])
    manifest.static = layout.to_dict()
    return static_graph_specs(dims, layout)


def _side_files(folder: Path, manifest: Manifest) -> dict:
    """Files a writer left beside its graphs (weights stored once for several graphs, external data):
    recorded with their sha256 like the graphs, so a damaged or missing one is caught at load."""
    known = {g["file"] for g in manifest.graphs.values()} | set(manifest.files) | {"manifest.json"}
    known |= {g["weights"]["file"] for g in manifest.graphs.values() if "weights" in g}
    known |= {g["weights"]["file"] for g in manifest.graphs.values() if "weights" in g}
    return {p.name: file_record(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in known}


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
