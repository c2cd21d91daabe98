"""One export, start to finish: checkpoint -> contract -> staged folder -> graphs, each checked by the
parity gate as soon as it is written -> tokenizer and manifest -> folder moved into place."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from platforms import PlatformError, open_session
from runtime.contract import Contract, StaticLayout
from runtime.manifest import (COMPUTE_PRECISIONS, FileRecord, FileRef, GraphRecord, Manifest, QuantizationRecord,
                              TensorRecord, file_record)
from runtime.probes import graph_cases

from .artifact import build_manifest, source_record, write_tokenizer
from .calibration_options import CalibrationSet, check_calibration
from .checkpoint import Checkpoint
from .conformance_writer import write_conformance
from .destination import prepare_destination, staged_folder, write_error
from .errors import ExportError
from .facts import read_contract
from .faults import fault_point
from .loading import load_checkpoint
from .mobile import mobile_record, with_prompt_ids, write_ort_variants
from .mobile_options import check_mobile_options
from .owners import scratch_folder
from .parity import check_graph, raise_on_failures
from .specs import graph_specs
from .targets import TARGETS

log = logging.getLogger("export")
EMBEDDED_PREFIX = "embedded:"


def resolve_checkpoint(model: str | None, scratch: Path) -> Checkpoint:
    """`None` or `embedded:tiny` loads the shipped trained checkpoint; another `embedded:<preset>` builds
    a deterministic random one offline; anything else loads."""
    if model is None or model.startswith(EMBEDDED_PREFIX):
        from .embedded import PRESETS, TRAINED, TRAINED_WEIGHTS, build_checkpoint

        preset = (model or EMBEDDED_PREFIX + TRAINED)[len(EMBEDDED_PREFIX):]
        if preset == TRAINED:
            return _trained_checkpoint(TRAINED_WEIGHTS)
        if preset not in PRESETS:
            raise ExportError(f"unknown embedded checkpoint {model!r}; expected one of "
                              + ", ".join(EMBEDDED_PREFIX + p for p in (TRAINED, *PRESETS)))
        log.info("building the embedded %s checkpoint (random weights, seed 0)", preset)
        checkpoint = load_checkpoint(str(build_checkpoint(scratch / preset, preset=preset)))
        checkpoint.source = EMBEDDED_PREFIX + preset
        return checkpoint
    return load_checkpoint(model)


def _trained_checkpoint(folder: Path) -> Checkpoint:
    """The shipped checkpoint trained on synthetic scenes, loaded from package data like any folder."""
    from .embedded import TRAINED

    if not (folder / "model.safetensors").is_file():
        raise ExportError(f"the trained embedded checkpoint is missing from {folder} (a broken install?); "
                          "reinstall florence2-edge, or pass --model embedded:random-tiny")
    log.info("loading the embedded %s checkpoint (trained on synthetic scenes) from %s", TRAINED, folder)
    checkpoint = load_checkpoint(str(folder))
    checkpoint.source = EMBEDDED_PREFIX + TRAINED
    return checkpoint


def run_export(model: str | None, target: str, output: Path, overwrite: bool = False,
               precision: str | None = None, tasks: dict | None = None, **options) -> Manifest:
    """Export `model` for `target` at `precision` (default: the target's first) into `output`.
    `tasks` declares extra tasks ({token: {"prompt", "parse_type"}}). `options` are target-specific
    (opset, static...) and reach the target's writer unchanged; `mobile` and `conformance` add the
    files of export/mobile.py and export/conformance_writer.py (conformance: default = mobile);
    `calibration` ("builtin", a folder, or a CalibrationSet; `calibration_count`) makes int8 calibrated."""
    spec_target = TARGETS[target]
    precision = precision or spec_target.precisions[0]
    calibration = options.pop("calibration", None)
    if not isinstance(calibration, CalibrationSet):
        calibration = check_calibration(None if calibration is None else str(calibration),
                                        options.pop("calibration_count", None), target, precision)
    options.pop("calibration_count", None)
    if spec_target.static:  # a target that only runs fixed shapes (coreml) gets them without --static
        options = {**options, "static": True}
    mobile, conformance = check_mobile_options(spec_target, options)
    output = prepare_destination(output, overwrite)
    started = time.perf_counter()
    with scratch_folder("edge") as scratch:
        checkpoint = resolve_checkpoint(model, Path(scratch))
        contract = read_contract(checkpoint)
        if options.get("static"):
            contract = contract.with_static(static_layout(contract, checkpoint, options))
        manifest = build_manifest(checkpoint, contract, target, precision, source_record(checkpoint), tasks)
        feeds = _calibration_feeds(calibration, checkpoint, contract, manifest)
        manifest = replace(manifest, quantization=quantization_record(target, precision, calibration, feeds))
        with staged_folder(output) as folder:
            graphs, results = {}, []
            specs = graph_specs(contract)
            for index, spec in enumerate(specs, 1):
                graph_options = {**options, "calibration": feeds.get(spec.name)}
                graphs[spec.name], parity = _export_graph(spec, spec_target, checkpoint.model, contract, folder,
                                                          f"[{index}/{len(specs)}]", precision, graph_options)
                results.append(parity)
            if mobile:  # the same gate for the .ort form of each graph
                graphs, ort_results = write_ort_variants(folder, specs, graphs, checkpoint.model, contract, precision)
                results += ort_results
            raise_on_failures(results)
            files = write_tokenizer(checkpoint.processor, folder)
            manifest = with_prompt_ids(manifest, folder)
            if mobile:
                manifest = replace(manifest, mobile=mobile_record(folder, manifest))
            files.update(_side_files(folder, graphs, files))
            manifest = replace(manifest, graphs=graphs, files=files)
            manifest.write(folder)
            if conformance:
                manifest = write_conformance(folder, manifest, prefer_ort=mobile)
    size = sum(r.bytes for r in _all_records(manifest)) / 1e6
    log.info("wrote %s (%.1f MB) in %.1f s", output, size, time.perf_counter() - started)
    return manifest


def _calibration_feeds(calibration: CalibrationSet | None, checkpoint, contract: Contract, manifest) -> dict:
    if calibration is None:
        return {}
    from .calibration import calibration_feeds

    return calibration_feeds(calibration, checkpoint.model, contract, manifest, checkpoint.processor.tokenizer)


def quantization_record(target: str, precision: str, calibration: CalibrationSet | None,
                        feeds: dict) -> QuantizationRecord | None:
    """The manifest's account of an int8/int4 export; None for float precisions."""
    from quantize.methods import graph_method, overall_method
    from runtime.contract import GRAPH_NAMES

    methods = {name: graph_method(target, precision, name, calibrated=name in feeds) for name in GRAPH_NAMES}
    if None in methods.values():
        return None
    method = overall_method(methods)
    calibrated = calibration is not None and method == "calibrated"
    return QuantizationRecord(method=method, graphs=methods, calibration=calibration.source if calibrated else None,
                              count=calibration.count if calibrated else None)


def static_layout(contract: Contract, checkpoint, options: dict) -> StaticLayout:
    """The fixed shapes of a static export; default rows: the checkpoint's beam count."""
    from .static_graphs import DEFAULT_MAX_DECODE, DEFAULT_PROMPT_BUCKET

    given = lambda key, default: default if options.get(key) is None else options[key]  # noqa: E731
    layout = StaticLayout(batch=1, beams=given("static_beams", checkpoint.generation_config.num_beams or 1),
                          prompt_bucket=given("prompt_bucket", DEFAULT_PROMPT_BUCKET),
                          max_decode=given("max_decode", DEFAULT_MAX_DECODE))
    problems = layout.problems(contract.dims)
    if problems:
        flags = {"prompt bucket": "--prompt-bucket", "max decode": "--max-decode", "static beams": "--static-beams"}
        message = problems[0]
        for words, flag in flags.items():
            message = message.replace(words, flag)
        raise ExportError(message)
    return layout


def _export_graph(spec, target, model, contract: Contract, folder: Path, step: str, precision: str,
                  options: dict) -> tuple[GraphRecord, object]:
    started = time.perf_counter()
    path = folder / f"{spec.name}{target.suffix}"
    example = graph_cases(contract, spec.name)[-1]  # the last case has every dynamic axis > 1
    fault_point(f"before:{spec.name}")
    try:
        written = target.writer(spec, model, example, path, precision=precision, **options)
    except Exception as err:  # a writer's own error type for a full disk (OpenVINO: "iostream error")
        disk = write_error(folder)
        if disk is not None:
            raise disk from err
        raise
    if target.verify:  # the backend cannot run here: the target checks what it can (export/coreml_check.py)
        parity = target.verify(spec, model, contract, written, precision=precision)
    else:
        try:
            compute = ({"inference_precision": COMPUTE_PRECISIONS[precision], "precision_fallback": True}
                       if precision in COMPUTE_PRECISIONS else {})  # what the runtime will compile it with
            session = open_session(target.name, path, device="cpu", **target.gate_session, **compute)
        except PlatformError as err:
            raise ExportError(str(err)) from None
        parity = check_graph(spec, session, model, contract, precision=precision)
    record = file_record(path)  # a folder graph (.mlpackage): every file in it, with its sha256
    io = getattr(written, "io", {})  # the writer's own I/O types (CoreML: int32 ids, its own names)
    weights = None
    if target.weights_suffix:  # OpenVINO's .bin: checked at load like the graph file itself
        weights_path = path.with_suffix(target.weights_suffix)
        weights = FileRef(file=weights_path.name, **vars(file_record(weights_path)))
    graph = GraphRecord(file=path.name, bytes=record.bytes, sha256=record.sha256, files=record.files,
                        inputs={t.name: _tensor_record(t, io.get("inputs", {}).get(t.name)) for t in spec.io.inputs},
                        outputs={t.name: _tensor_record(t, io.get("outputs", {}).get(t.name)) for t in spec.io.outputs},
                        parity=parity.to_dict(), weights=weights)
    _log_graph(step, spec.name, time.perf_counter() - started, graph, parity)
    fault_point(f"after:{spec.name}")
    return graph, parity


def _tensor_record(tensor, written: dict | None) -> TensorRecord:
    written = written or {}
    if "shape" in written and tuple(written["shape"]) != tensor.shape:
        raise ExportError(f"the written graph's {tensor.name} has shape {written['shape']}, the contract {list(tensor.shape)}")
    return TensorRecord(dtype=written.get("dtype", tensor.dtype), shape=tensor.shape, coreml_name=written.get("coreml_name"))


def _log_graph(step: str, name: str, seconds: float, graph: GraphRecord, parity) -> None:
    size = graph.bytes + (graph.weights.bytes if graph.weights else 0)
    verdict = "ok" if not parity.failures else "FAILED"
    summary = f"max abs diff {_diff_summary(parity)}" if parity.floor is None else \
        f"min cosine {min(parity.cosine.values()):.5f} (floor {parity.floor:g})"
    if getattr(parity, "note", None):  # checked without the backend (coreml on Linux): say what was
        summary += f" [{parity.note}]"
    log.info("%s %-15s %6.1f s %9.1f MB  %s %s", step, name, seconds, size / 1e6, summary, verdict)


def _all_records(manifest: Manifest) -> list:
    return [*manifest.graphs.values(), *(g.weights for g in manifest.graphs.values() if g.weights),
            *(v for g in manifest.graphs.values() for v in g.variants.values()), *manifest.files.values()]


def _side_files(folder: Path, graphs: dict[str, GraphRecord], files: dict[str, FileRecord]) -> dict[str, FileRecord]:
    """Files a writer left beside its graphs (weights stored once for several graphs, external data):
    recorded with their sha256 like the graphs, so a damaged or missing one is caught at load."""
    known = {g.file for g in graphs.values()} | set(files) | {"manifest.json"}
    known |= {g.weights.file for g in graphs.values() if g.weights}
    known |= {v.file for g in graphs.values() for v in g.variants.values()}
    return {p.name: file_record(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in known}


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
