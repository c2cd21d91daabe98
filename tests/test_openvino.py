"""The openvino target: IR artifacts (dynamic, --static, --int8, --int4) of the tiny checkpoint, run by
platforms/openvino.py, generate exactly transformers' ids; devices, precision hint, compile cache,
static limits and CLI checks. Each artifact is exported once for the module."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytest.importorskip("nncf", reason="the openvino export needs nncf for --int8/--int4")

from platforms import PlatformError, open_session  # noqa: E402
from runtime import Florence2  # noqa: E402
from runtime.contract import LimitError  # noqa: E402
from runtime.errors import ArtifactError, BackendError  # noqa: E402
from runtime.manifest import read_manifest, sha256_of  # noqa: E402

TASKS = [("<CAPTION>", None), ("<OD>", None), ("<CAPTION_TO_PHRASE_GROUNDING>", "a green car parked in front of a yellow building")]
MODES = {"greedy": dict(num_beams=1, no_repeat_ngram_size=0), "beams3": dict(num_beams=3, no_repeat_ngram_size=3)}
MAX_NEW = 15
STATIC = dict(static=True, prompt_bucket=32, max_decode=24)


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Compile cache in a temporary folder, not the user's."""
    folder = tmp_path_factory.mktemp("ov-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLORENCE2_EDGE_CACHE", str(folder))
        yield folder / "openvino"


def _export(checkpoint, tmp_path_factory, name, **options):
    from export.pipeline import run_export

    output = tmp_path_factory.mktemp("ov-artifacts") / name
    run_export(str(checkpoint), "openvino", output, **options)
    return output


@pytest.fixture(scope="module")
def ov_artifact(tiny_checkpoint, tmp_path_factory):
    return _export(tiny_checkpoint, tmp_path_factory, "tiny-ov")


@pytest.fixture(scope="module")
def static_artifact(tiny_checkpoint, tmp_path_factory):
    return _export(tiny_checkpoint, tmp_path_factory, "tiny-ov-static", **STATIC)


@pytest.fixture(scope="module")
def models(ov_artifact, static_artifact):
    return {"dynamic": Florence2.load(ov_artifact), "static": Florence2.load(static_artifact)}


@pytest.fixture(scope="module")
def hf_ids(hf_model, hf_processor, images):
    """transformers' generate() on `images[i] for i in indices`, memoised: one reference, both artifacts."""

    @functools.lru_cache(maxsize=None)
    def generate(indices: tuple, prompts: tuple, mode: str):
        inputs = hf_processor(text=list(prompts), images=[images[i] for i in indices], return_tensors="pt", padding=True)
        with torch.no_grad():
            return hf_model.generate(**inputs, **MODES[mode], max_new_tokens=MAX_NEW).tolist()

    return generate


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["dynamic", "static"])
@pytest.mark.parametrize("task,text", TASKS)
def test_generate_ids_equal_transformers(models, hf_ids, images, form, mode, task, text):
    model = models[form]
    for index, image in enumerate(images):
        want = hf_ids((index,), (task + (text or ""),), mode)[0]
        assert model.generate(image, task, text, **MODES[mode], max_new_tokens=MAX_NEW) == want, (form, index)


@pytest.mark.parametrize("mode", MODES)
def test_long_fixed_length_decode_equals_transformers(models, hf_model, hf_processor, images, mode):
    """30 decoder steps, so the self-attention cache grows well past 15 rows after the empty first step:
    the case OpenVINO's CPU snippets got wrong (platforms/openvino.py disables them)."""
    length = dict(max_new_tokens=30, min_new_tokens=30)
    inputs = hf_processor(text="<OD>", images=images[1], return_tensors="pt")
    with torch.no_grad():
        want = hf_model.generate(**inputs, **MODES[mode], **length)[0].tolist()
    assert len(want) == 31
    assert models["dynamic"].generate(images[1], "<OD>", **MODES[mode], **length) == want


@pytest.mark.parametrize("mode", MODES)
def test_static_batch_runs_image_by_image_with_transformers_padding(models, hf_ids, images, mode):
    tasks, texts = ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>"], [None, "a cat sitting on a wooden table"]
    want = hf_ids((0, 1), (tasks[0], tasks[1] + texts[1]), mode)
    assert models["static"].generate(images[:2], tasks, texts, **MODES[mode], max_new_tokens=MAX_NEW) == want


def test_manifest_records_xml_and_bin(ov_artifact, static_artifact):
    for artifact in (ov_artifact, static_artifact):
        data = json.loads((artifact / "manifest.json").read_text())
        assert data["target"] == "openvino" and data["precision"] == "fp32"
        for graph in data["graphs"].values():
            assert graph["file"].endswith(".xml") and graph["sha256"] == sha256_of(artifact / graph["file"])
            weights = graph["weights"]
            assert weights["file"] == graph["file"].replace(".xml", ".bin")
            assert weights["sha256"] == sha256_of(artifact / weights["file"])
            assert weights["bytes"] == (artifact / weights["file"]).stat().st_size
            assert graph["parity"]["passed"]
    assert json.loads((ov_artifact / "manifest.json").read_text())["static"] is None
    static = json.loads((static_artifact / "manifest.json").read_text())
    assert static["static"] == {"batch": 1, "beams": 3, "prompt_bucket": 32, "max_decode": 24}
    decoder = static["graphs"]["decoder"]
    assert list(decoder["inputs"])[:3] == ["input_ids", "position", "encoder_attention_mask"]
    assert decoder["parity"]["cases"] == 3  # first, middle and last buffer slot


def test_damaged_bin_is_refused(ov_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ov_artifact, copy)
    with open(copy / "decoder.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="decoder.bin does not match its sha256"):
        read_manifest(copy)


def test_static_graphs_match_transformers_on_fresh_inputs(static_artifact, hf_model):
    """The static decoder against transformers given the same prefix, buffers holding noise past it."""
    from export.specs import graph_specs
    from runtime.probes import graph_cases

    manifest = read_manifest(static_artifact)
    contract = manifest.contract
    assert contract.static is not None
    for spec in graph_specs(contract):
        session = open_session("openvino", manifest.graph_path(static_artifact, spec.name))
        for case in graph_cases(contract, spec.name, seed=1):
            got, want = session.run(case), spec.reference(hf_model, case, contract)
            for name in spec.outputs:
                np.testing.assert_allclose(got[name], want[name], atol=spec.tolerance_of(name), rtol=0,
                                           err_msg=f"{spec.name}.{name}")


def test_static_limits_are_one_line_errors(models, images):
    model = models["static"]
    assert model.defaults.max_new_tokens == 24  # the checkpoint's 1024, within the buffers
    with pytest.raises(LimitError, match=r"prompt is \d+ tokens, longer than this static artifact's prompt bucket of 32"):
        model.generate(images[0], "<CAPTION_TO_PHRASE_GROUNDING>", "a red car " * 12)
    with pytest.raises(LimitError, match="max_new_tokens=25 is more than .* KV buffers hold \\(24\\)"):
        model.generate(images[0], "<OD>", max_new_tokens=25)
    with pytest.raises(LimitError, match="num_beams=4 is more than .* 3 decoder rows"):
        model.generate(images[0], "<OD>", num_beams=4)


def _absent(device: str) -> bool:
    from platforms.openvino import core

    return not any(d.split(".")[0] == device.upper() for d in core().available_devices)


@pytest.mark.parametrize("device", ["npu", "gpu"])
def test_absent_device_is_one_line_error_naming_present_devices(static_artifact, device):
    from platforms.openvino import core

    if not _absent(device):
        pytest.skip(f"this machine has a {device}")
    with pytest.raises(BackendError) as err:
        Florence2.load(static_artifact, device=device)
    message = str(err.value)
    assert "\n" not in message and f"device {device!r} is not available" in message
    assert f"present: {', '.join(core().available_devices)}" in message


def test_npu_needs_a_static_artifact(ov_artifact):
    with pytest.raises(ArtifactError, match="needs a static-shape artifact .*--static"):
        Florence2.load(ov_artifact, device="npu")


def test_inference_precision_is_f32_unless_asked(ov_artifact):
    from platforms.openvino import core

    path = ov_artifact / "decoder.xml"
    hint = lambda session: str(session._compiled.get_property("INFERENCE_PRECISION_HINT"))  # noqa: E731
    assert "float32" in hint(open_session("openvino", path))
    if "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        model = Florence2.load(ov_artifact, inference_precision="bf16")
        assert "bfloat16" in hint(model.graphs["vision_encoder"].session)
    with pytest.raises(PlatformError, match="unknown inference_precision 'int3'"):
        open_session("openvino", path, inference_precision="int3")


def test_compile_cache_serves_a_second_load(ov_artifact, cache_dir, images):
    Florence2.load(ov_artifact)
    blobs = sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*.blob"))
    assert len(blobs) >= 4
    again = Florence2.load(ov_artifact)
    assert sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*.blob")) == blobs
    assert len(again.generate(images[0], "<OD>", max_new_tokens=5)) > 1


def test_compile_cache_keeps_option_sets_apart(ov_artifact, cache_dir):
    """A blob compiled with other options (here: threads) is never served: OpenVINO's own cache key
    leaves some options out, so each option set gets its own folder."""
    path = ov_artifact / "decoder.xml"
    open_session("openvino", path)
    open_session("openvino", path, threads=1)
    assert len({p.parent for p in cache_dir.rglob("*.blob")}) >= 2


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_compressed_artifacts(tiny_checkpoint, tmp_path_factory, ov_artifact, images, precision):
    artifact = _export(tiny_checkpoint, tmp_path_factory, f"tiny-ov-{precision}", precision=precision)
    data = json.loads((artifact / "manifest.json").read_text())
    assert data["precision"] == precision
    full = json.loads((ov_artifact / "manifest.json").read_text())
    size = lambda d: sum(g["weights"]["bytes"] for g in d["graphs"].values())  # noqa: E731
    assert size(data) < 0.7 * size(full)
    for graph in data["graphs"].values():
        parity = graph["parity"]
        assert parity["passed"] and parity["fidelity_floor"] is not None
        assert parity["min_cosine"] >= parity["fidelity_floor"]
    ids = Florence2.load(artifact).generate(images[0], "<CAPTION>", num_beams=3, max_new_tokens=MAX_NEW)
    assert ids[:2] == [2, 0] and len(ids) > 2  # decoder start, forced BOS, then generated tokens


def test_cli_checks_static_options():
    from export.cli import _check_target, build_parser
    from export.errors import ExportError

    parse = build_parser().parse_args
    _check_target(parse(["--target", "openvino", "--static", "--prompt-bucket", "32", "--max-decode", "64"]))
    with pytest.raises(ExportError, match="--prompt-bucket applies to --static exports"):
        _check_target(parse(["--target", "openvino", "--prompt-bucket", "32"]))
    with pytest.raises(ExportError, match="--opset applies to the onnx target"):
        _check_target(parse(["--target", "openvino", "--opset", "18"]))


def test_static_layout_limits(tiny_checkpoint):
    from export.errors import ExportError
    from export.loading import load_checkpoint
    from export.facts import read_contract
    from export.pipeline import static_layout

    checkpoint = load_checkpoint(str(tiny_checkpoint))
    contract = read_contract(checkpoint)
    assert static_layout(contract, checkpoint, {"prompt_bucket": 447, "max_decode": 1024}).prompt_bucket == 447
    with pytest.raises(ExportError, match=r"--prompt-bucket must be 1\.\.447"):
        static_layout(contract, checkpoint, {"prompt_bucket": 448})
    with pytest.raises(ExportError, match=r"--max-decode must be 1\.\.1024"):
        static_layout(contract, checkpoint, {"max_decode": 2000})
