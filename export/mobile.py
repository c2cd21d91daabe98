"""`python -m export --target onnx --mobile`: what a native app embeds beside the ONNX graphs.

- Each graph in ORT format (`<graph>.ort`), written by onnxruntime's own converter
  (`onnxruntime.tools.convert_onnx_models_to_ort`: optimized at ORT_ENABLE_ALL, "fixed" style, for
  ARM), recorded as the graph's "ort" variant and held to the same parity gate as the .onnx file.
- `required_operators.config`: the operators of all four .ort graphs, the input of a minimal ORT
  Mobile build (`build.sh --minimal_build --include_ops_by_config required_operators.config`).
- `token_bytes.json`: id -> the bytes of its token, so an app turns ids into text without a
  tokenizer library (see runtime/token_bytes.py for the format).
- The manifest's `mobile` record (runtime/manifest.py MobileRecord), with the dataflow between the
  graphs in words (runtime/contract.py `Contract.dataflow`).

The ORT format has no external data: a quantized artifact's word embedding, stored once in
`shared-<hash>.bin` for `embed_tokens.onnx` and `decoder.onnx` (quantize/tied.py), is stored inside
both `embed_tokens.ort` and `decoder.ort` (`embedded_tables` measures it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from platforms import PlatformError, open_session
from runtime.contract import Contract
from runtime.manifest import TOKENIZER_NAME, FileRef, GraphRecord, Manifest, MobileRecord, file_record
from runtime.token_bytes import TOKEN_BYTES_NAME, decode_bytes, encode_table

from .errors import ExportError
from .parity import GraphParity, check_graph

log = logging.getLogger("export")
OPERATORS_CONFIG = "required_operators.config"
ORT_SUFFIX = ".ort"
# The converter's "fixed" style bakes every optimization in (runtime-optimization replay is for
# compiling EPs such as NNAPI or CoreML); "arm" drops x86-only layouts (NCHWc) and allows int8 QDQ.
ORT_OPTIMIZATION = "ORT_ENABLE_ALL, fixed style (no runtime optimizations saved), target_platform arm"


def write_ort_variants(folder: Path, specs, graphs: dict[str, GraphRecord], model, contract: Contract,
                       precision: str) -> tuple[dict[str, GraphRecord], list[GraphParity]]:
    """Convert each graph's .onnx to .ort beside it, run the parity gate on the .ort session, and
    write the operators config of all of them. Returns the graphs with their "ort" variant recorded,
    and the gate's results (the caller raises on failures with the .onnx ones)."""
    updated, results, written = dict(graphs), [], []
    for spec in specs:
        started = time.perf_counter()
        path = convert_to_ort(folder / graphs[spec.name].file)
        written.append(path)
        try:
            session = open_session("onnx", path, device="cpu")
        except PlatformError as err:
            raise ExportError(str(err)) from None
        parity = dataclasses.replace(check_graph(spec, session, model, contract, precision=precision),
                                     graph=f"{spec.name}{ORT_SUFFIX}")
        results.append(parity)
        record = file_record(path)
        ref = FileRef(file=path.name, bytes=record.bytes, sha256=record.sha256, parity=parity.to_dict())
        updated[spec.name] = dataclasses.replace(graphs[spec.name], variants={**graphs[spec.name].variants, "ort": ref})
        _log(spec.name, time.perf_counter() - started, ref.bytes, parity)
    write_operators_config(written, folder / OPERATORS_CONFIG)
    return updated, results


def convert_to_ort(onnx_path: Path) -> Path:
    """`<graph>.ort` beside `<graph>.onnx`, by onnxruntime's converter (external data is read from
    beside the .onnx file and stored inside the .ort one)."""
    with _ort_tools() as tools, tempfile.TemporaryDirectory(prefix="florence2-ort-") as scratch:
        try:
            tools.convert_onnx_models_to_ort(
                onnx_path, output_dir=Path(scratch), optimization_styles=[tools.OptimizationStyle.Fixed],
                target_platform="arm")
        except Exception as err:  # onnxruntime's own exception types; one line for the user
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportError(f"onnxruntime cannot convert {onnx_path.name} to the ORT format: {first}") from None
        target = onnx_path.with_suffix(ORT_SUFFIX)
        # The converter's per-model operators config stays in the scratch folder: one config covers all four.
        shutil.move(str(Path(scratch) / target.name), target)
    return target


def write_operators_config(ort_paths: list[Path], path: Path) -> Path:
    """The operators (per domain and opset) the .ort graphs use, as onnxruntime's build reads them."""
    with _ort_tools():
        from onnxruntime.tools.ort_format_model import create_config_from_models

        create_config_from_models(sorted(ort_paths), path, enable_type_reduction=False)
    # The tool lists the models by absolute path (here, the staging folder): keep their names only.
    lines = [f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line
             for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def _ort_tools():
    """onnxruntime.tools prints its progress on stdout and, when imported, configures the root logger
    (logging.basicConfig) and logs at INFO: none of it is the user's concern; our log says what happens."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()  # makes the tools' basicConfig a no-op
    if guard:
        root.addHandler(guard)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from onnxruntime.tools import convert_onnx_models_to_ort as tools

            logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
            yield tools
    finally:
        if guard:
            root.removeHandler(guard)


def _log(name: str, seconds: float, size: int, parity: GraphParity) -> None:
    verdict = "ok" if not parity.failures else "FAILED"
    summary = (f"max abs diff {parity.worst:.2e}" if parity.floor is None else
               f"min cosine {min(parity.cosine.values()):.5f} (floor {parity.floor:g})")
    log.info("      %-15s %6.1f s %9.1f MB  .ort %s %s", name, seconds, size / 1e6, summary, verdict)


def write_token_bytes(folder: Path, tokenizer_size: int) -> Path:
    """token_bytes.json from the artifact's tokenizer.json, checked against the tokenizer's own decoding."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_NAME
    decoder = (json.loads(path.read_text(encoding="utf-8")).get("decoder") or {}).get("type")
    if decoder != "ByteLevel":
        raise ExportError(f"--mobile: the id -> token-bytes table needs a byte-level BPE tokenizer (Florence-2's); "
                          f"this tokenizer's decoder is {decoder!r}")
    tokenizer = Tokenizer.from_file(str(path))
    table, special = token_table(tokenizer, tokenizer_size)
    _check_table(tokenizer, table)
    out = folder / TOKEN_BYTES_NAME
    out.write_text(json.dumps(encode_table(table, special)) + "\n", encoding="utf-8")
    return out


def token_table(tokenizer, size: int) -> tuple[list[bytes], list[int]]:
    """The bytes of each id below `size` as the tokenizer's ByteLevel decoder produces them (an added
    token is its own text; a BPE token maps each character back to its byte), and the special ids."""
    to_byte = _byte_decoder()
    added = tokenizer.get_added_tokens_decoder()
    table = []
    for index in range(size):
        token = added[index].content if index in added else tokenizer.id_to_token(index)
        if token is None:
            raise ExportError(f"--mobile: the tokenizer has no token for id {index} (below its size {size})")
        chars = [to_byte.get(c) for c in token]
        # tokenizers' rule: a token with any character outside the byte alphabet is taken as UTF-8 text.
        table.append(token.encode("utf-8") if None in chars else bytes(chars))
    return table, sorted(i for i, t in added.items() if t.special and i < size)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character each byte is written as -> that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(shifted)}}


def _check_table(tokenizer, table: list[bytes]) -> None:
    """Fail the export rather than ship a table that decodes differently from the tokenizer."""
    import numpy as np

    rng = np.random.default_rng(0)
    cases = [list(range(len(table)))] + [rng.integers(0, len(table), 40).tolist() for _ in range(50)]
    for ids in cases:
        want = tokenizer.decode(ids, skip_special_tokens=False)
        if decode_bytes(table, ids) != want:
            raise ExportError(f"--mobile: the token table decodes ids {ids[:8]}... differently from tokenizer.json")


def with_prompt_ids(manifest: Manifest, folder: Path) -> Manifest:
    """The manifest with the exact prompt ids of every task that takes no text (the artifact's own
    tokenizer.json encodes them, as the runtime would)."""
    from runtime.tokenizer import PromptTokenizer

    tokens = manifest.tokens
    tokenizer = PromptTokenizer(folder / TOKENIZER_NAME, tokens.bos, tokens.eos, tokens.pad)
    tasks = {token: task if "{input}" in task.prompt else
             dataclasses.replace(task, prompt_ids=tuple(tokenizer.encode(task.prompt)))
             for token, task in manifest.tasks.items()}
    return dataclasses.replace(manifest, tasks=tasks)


def mobile_record(folder: Path, manifest: Manifest) -> MobileRecord:
    """Writes token_bytes.json; the record naming it, the operators config and the dataflow."""
    import onnxruntime

    table = write_token_bytes(folder, manifest.dims.tokenizer_size)
    return MobileRecord(ort_version=onnxruntime.__version__, ort_optimization=ORT_OPTIMIZATION,
                        operators_config=OPERATORS_CONFIG, token_bytes=table.name,
                        dataflow=manifest.contract.dataflow())


def embedded_tables(folder: Path, manifest: Manifest) -> dict[str, dict[str, int]]:
    """{shared file: {.ort file: bytes of it stored inside}}: what the ORT format's lack of external
    data costs (an initializer of a .ort file whose bytes equal a shared .bin file's)."""
    import hashlib

    with _ort_tools():
        import onnxruntime.tools.ort_format_model  # noqa: F401  (puts its flatbuffers bindings on the path)
        import ort_flatbuffers_py.fbs as fbs

    shared = {hashlib.sha256((folder / name).read_bytes()).hexdigest(): name
              for name in manifest.files if name.startswith("shared-")}
    found: dict[str, dict[str, int]] = {name: {} for name in shared.values()}
    for graph in manifest.graphs.values():
        if "ort" not in graph.variants:
            continue
        ort = graph.variants["ort"].file
        buffer = bytearray((folder / ort).read_bytes())
        model = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
        for index in range(model.InitializersLength()):
            data = model.Initializers(index).RawDataAsNumpy()
            if data is not None and not isinstance(data, int):
                name = shared.get(hashlib.sha256(data.tobytes()).hexdigest())
                if name:
                    found[name][ort] = found[name].get(ort, 0) + data.nbytes
    return found
