"""The coreml target: ML Program packages of the tiny checkpoint (fp16 and --int8, exported once for the
module), read back with coremltools: I/O as the manifest says, rank <= 5, quantized weights, sizes; the
traced static modules that were converted equal transformers; the one-line error off macOS. The tests
that run CoreML (token parity through runtime.Florence2, the fidelity of fp16/int8 numerics) need a Mac
(.github/workflows/macos.yml)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools", reason="the coreml extra is not installed")

from export.coreml_check import TracedSession, read_program  # noqa: E402
from export.parity import check_graph, fidelity_floor  # noqa: E402
from export.specs import graph_specs  # noqa: E402
from platforms import PlatformError, open_session  # noqa: E402
from runtime import Florence2  # noqa: E402
from runtime.errors import ArtifactError, BackendError  # noqa: E402
from runtime.probes import graph_cases  # noqa: E402
from runtime.manifest import GRAPH_NAMES, read_manifest, sha256_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STATIC = dict(prompt_bucket=32, max_decode=24)  # small buffers: small decoder inputs, same graph
LAYOUT = {"batch": 1, "beams": 3, **STATIC}
needs_mac = pytest.mark.skipif(sys.platform != "darwin", reason="CoreML prediction needs macOS")


def _export(checkpoint, tmp_path_factory, name, **options):
    from export.pipeline import run_export

    output = tmp_path_factory.mktemp("coreml-artifacts") / name
    run_export(str(checkpoint), "coreml", output, **STATIC, **options)
    return output


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory):
    return {"fp16": _export(tiny_checkpoint, tmp_path_factory, "tiny-coreml"),
            "int8": _export(tiny_checkpoint, tmp_path_factory, "tiny-coreml-int8", precision="int8")}


def _manifest(artifact) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def _package_bytes(artifact, graphs=GRAPH_NAMES) -> int:
    return sum(f.stat().st_size for g in graphs for f in (artifact / f"{g}.mlpackage").rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------ the artifact


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_one_mlpackage_per_graph_with_every_file_hashed(artifacts, precision):
    artifact = artifacts[precision]
    data = _manifest(artifact)
    assert data["target"] == "coreml" and data["precision"] == precision and data["static"] == LAYOUT
    assert sorted(p.name for p in artifact.iterdir()) == sorted(
        ["manifest.json", "tokenizer.json", *(f"{g}.mlpackage" for g in GRAPH_NAMES)])
    for name, graph in data["graphs"].items():
        package = artifact / graph["file"]
        assert graph["file"] == f"{name}.mlpackage" and package.is_dir()
        assert {"Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"} <= set(graph["files"])
        for inner, record in graph["files"].items():
            assert record == {"sha256": sha256_of(package / inner), "bytes": (package / inner).stat().st_size}
        assert graph["bytes"] == sum(r["bytes"] for r in graph["files"].values())
    read_manifest(artifact)  # verifies every file


def test_parity_record_says_what_was_checked(artifacts):
    for precision, artifact in artifacts.items():
        for name, graph in _manifest(artifact)["graphs"].items():
            parity = graph["parity"]
            assert parity["backend_run"] is False and parity["reason"] == "CoreML prediction needs macOS"
            assert parity["passed"] and parity["program_problems"] == []
            assert parity["max_abs_diff"] <= max([parity["tolerance"], *parity["output_tolerances"].values()])
            program = parity["program"]
            assert program["io_matches_manifest"] and program["opset"] == "CoreML7"  # iOS 17 / macOS 14
            assert program["max_rank"] <= 5
            assert (program["quantized_weight_ops"] > 0) == (precision == "int8"), name


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_programs_io_match_the_manifest(artifacts, precision):
    """Read back with coremltools, independently of the record the exporter wrote."""
    artifact = artifacts[precision]
    data = _manifest(artifact)
    for name, graph in data["graphs"].items():
        program = read_program(artifact / graph["file"])
        for kind in ("inputs", "outputs"):
            assert program.__dict__[kind] == graph[kind], (name, kind)
        assert program.specification_version == 8  # iOS 17 / macOS 14
    decoder = data["graphs"]["decoder"]
    hd, heads, layers = data["dims"]["head_dim"], data["dims"]["decoder_heads"], data["dims"]["decoder_layers"]
    assert list(decoder["inputs"])[:3] == ["input_ids", "position", "encoder_attention_mask"]
    assert decoder["inputs"]["input_ids"] == {"dtype": "int32", "shape": [3, 1], "coreml_name": "input_ids"}
    assert decoder["inputs"]["past.0.key"]["shape"] == [3, heads, STATIC["max_decode"], hd]
    assert decoder["inputs"]["past.0.key"]["coreml_name"] == "past_0_key"
    assert decoder["outputs"][f"present.{layers - 1}.value"]["shape"] == [3, heads, 1, hd]
    sequence = data["dims"]["image_tokens"] + STATIC["prompt_bucket"]
    assert data["graphs"]["encoder"]["inputs"]["attention_mask"]["shape"] == [1, sequence]
    assert data["graphs"]["vision_encoder"]["inputs"]["pixel_values"] == {
        "dtype": "float32", "shape": [1, 3, 768, 768], "coreml_name": "pixel_values"}


def test_no_tensor_above_rank_5(artifacts):
    for artifact in artifacts.values():
        ranks = {name: read_program(artifact / f"{name}.mlpackage").max_rank for name in GRAPH_NAMES}
        assert max(ranks.values()) <= 5, ranks
        assert ranks["vision_encoder"] == 5  # the rewritten window partition: the walk does see deep tensors


def test_int8_programs_hold_quantized_weights_and_are_smaller(artifacts):
    fp16 = {name: read_program(artifacts["fp16"] / f"{name}.mlpackage") for name in GRAPH_NAMES}
    int8 = {name: read_program(artifacts["int8"] / f"{name}.mlpackage") for name in GRAPH_NAMES}
    for name in GRAPH_NAMES:
        assert fp16[name].quantized_weights == 0 and "int8" not in fp16[name].weight_dtypes
        assert set(fp16[name].weight_dtypes) <= {"float16", "int32"}, (name, fp16[name].weight_dtypes)
    for name in ("vision_encoder", "encoder", "decoder", "embed_tokens"):
        assert int8[name].ops["constexpr_affine_dequantize"] > 0, name
        assert int8[name].weight_dtypes["int8"] > 0, name
    assert _package_bytes(artifacts["int8"]) < 0.75 * _package_bytes(artifacts["fp16"])
    for name in ("vision_encoder", "decoder"):
        assert _package_bytes(artifacts["int8"], [name]) < _package_bytes(artifacts["fp16"], [name]), name


def _infinite_constants_feeding(program_path, op_types=("mul", "sub", "real_div", "matmul", "linear")) -> list[str]:
    """Constants that are +-inf in fp16 (|x| >= 65520) used by an op where inf * 0 or inf - inf makes NaN."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(program_path))
    main = spec.mlProgram.functions["main"]
    operations = main.block_specializations[main.opset].operations
    infinite = set()
    for op in operations:
        value = op.attributes["val"] if op.type == "const" else None
        if value is None or not value.HasField("immediateValue"):
            continue
        tensor = value.immediateValue.tensor
        numbers = np.array(tensor.floats.values, dtype=np.float32) if tensor.floats.values else (
            np.frombuffer(tensor.bytes.values, dtype=np.float16) if value.type.tensorType.dataType == 10 else np.zeros(0))
        if numbers.size and np.max(np.abs(numbers.astype(np.float64))) >= 65520:
            infinite.add(op.outputs[0].name)
    return [f"{op.type}({arg.name})" for op in operations if op.type in op_types
            for argument in op.inputs.values() for arg in argument.arguments if arg.name in infinite]


def test_fp16_programs_multiply_no_infinite_constant(artifacts):
    """An additive mask written (1 - mask) * finfo.min becomes 0 * -inf = NaN in fp16: masks are selects."""
    for name in GRAPH_NAMES:
        assert _infinite_constants_feeding(artifacts["fp16"] / f"{name}.mlpackage") == [], name


def test_opening_a_package_keeps_the_artifact_valid_and_damage_is_caught(artifacts, tmp_path):
    """coremltools rewrites a package's own Manifest.json on every open: not hashed; the rest is."""
    copy = tmp_path / "artifact"
    shutil.copytree(artifacts["fp16"], copy)
    (copy / "encoder.mlpackage" / "Manifest.json").write_text((copy / "encoder.mlpackage" / "Manifest.json").read_text() + " ")
    read_program(copy / "encoder.mlpackage")
    read_manifest(copy)
    weights = copy / "decoder.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="weight.bin does not match its sha256"):
        read_manifest(copy)
    shutil.rmtree(copy / "embed_tokens.mlpackage")
    with pytest.raises(ArtifactError, match="missing embed_tokens.mlpackage"):
        read_manifest(copy, verify=True)


# ------------------------------------------------------------------------------------ the torch side


def test_traced_static_modules_equal_transformers_on_fresh_inputs(artifacts, hf_model):
    """The modules coremltools converts (rank-5 vision tower, masked encoder, buffer decoder, sizes
    folded) against transformers, on inputs the export's gate did not see (seed 1)."""
    from export.coreml_writer import trace

    contract = read_manifest(artifacts["fp16"]).contract
    for spec in graph_specs(contract):
        traced, _ = trace(spec, hf_model, graph_cases(contract, spec.name)[-1])
        session = TracedSession(spec, traced)
        for feeds in graph_cases(contract, spec.name, seed=1):
            got, want = session.run(feeds), spec.reference(hf_model, feeds, contract)
            for name in spec.outputs:
                np.testing.assert_allclose(got[name], want[name], atol=spec.tolerance_of(name), rtol=0,
                                           err_msg=f"{spec.name}.{name}")


# ------------------------------------------------------------------------------------ off macOS


@pytest.mark.skipif(sys.platform == "darwin", reason="the error is for systems without CoreML")
@pytest.mark.parametrize("device", ["cpu", "ane"])
def test_loading_off_macos_is_one_line_error(artifacts, device):
    with pytest.raises(BackendError) as error:
        Florence2.load(artifacts["fp16"], device=device)
    assert str(error.value) == f"CoreML prediction needs macOS 14+; this is {__import__('platform').system()}"
    assert "\n" not in str(error.value)


def test_unknown_device_names_the_accepted_ones(artifacts):
    with pytest.raises(PlatformError, match="unknown device 'tpu' for coreml; expected one of cpu, gpu, ane, npu, all, auto"):
        open_session("coreml", artifacts["fp16"] / "decoder.mlpackage", device="tpu")


def test_cli_refuses_int4_with_the_reason_and_takes_static_options_without_static(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export", "--target", "coreml", "--int4", "--output", str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--int4 is not available for --target coreml" in result.stderr and "iOS 18 / macOS 15" in result.stderr
    assert not (tmp_path / "o").exists()
    from export import cli

    cli._check_target(cli.build_parser().parse_args(["--target", "coreml", "--prompt-bucket", "16", "--fp32"]))


# ------------------------------------------------------------------------------------ on a Mac

MODES = {"greedy": dict(num_beams=1, no_repeat_ngram_size=0), "beams3": dict(num_beams=3, no_repeat_ngram_size=3)}
MAX_NEW = 15


@pytest.fixture(scope="module")
def fp32_artifact(tiny_checkpoint, tmp_path_factory):
    return _export(tiny_checkpoint, tmp_path_factory, "tiny-coreml-fp32", precision="fp32")


@pytest.fixture(scope="module")
def hf_ids(hf_model, hf_processor, images):
    @functools.lru_cache(maxsize=None)
    def generate(index: int, prompt: str, mode: str):
        inputs = hf_processor(text=[prompt], images=[images[index]], return_tensors="pt")
        with torch.no_grad():
            return hf_model.generate(**inputs, **MODES[mode], max_new_tokens=MAX_NEW)[0].tolist()

    return generate


@needs_mac
@pytest.mark.parametrize("mode", MODES)
def test_generate_equals_transformers_on_a_mac(fp32_artifact, hf_ids, images, mode):
    """fp32 token parity is a CPU claim: the Neural Engine computes in fp16 only, so an fp32 package
    asked for "ane" runs elsewhere (the session says so). The ane is judged on fp16 below."""
    model = Florence2.load(fp32_artifact, device="cpu")
    assert model.device == "cpu"
    for index, task in enumerate(["<CAPTION>", "<OD>"]):
        want = hf_ids(index, task, mode)
        assert model.generate(images[index], task, **MODES[mode], max_new_tokens=MAX_NEW) == want, task


@needs_mac
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("device", ["cpu", "ane"])
def test_reduced_precision_graphs_keep_their_fidelity_floor_on_a_mac(artifacts, hf_model, precision, device):
    """The gate as it runs for a backend that can run: CoreML's own numerics against transformers, on
    the device really used (an "ane" session whose compute plan puts no op on the Neural Engine says
    "cpu", and this test then fails rather than claim the Neural Engine)."""
    contract = read_manifest(artifacts[precision]).contract
    for spec in graph_specs(contract):
        session = open_session("coreml", artifacts[precision] / f"{spec.name}.mlpackage", device=device)
        assert session.device == device, (spec.name, session.device)
        parity = check_graph(spec, session, hf_model, contract, precision=precision)
        assert not parity.failures and parity.floor == fidelity_floor(precision, spec.name), parity.failures
