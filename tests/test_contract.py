"""The graph contract: checkpoints of other image sizes and widths export and run token-identical to
transformers (ONNX and OpenVINO, dynamic and static), the manifest types and checks every fact, declared
tasks parse as declared, artifact facts are not options, and requests are checked against the limits."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import Florence2, parse
from runtime.contract import LimitError
from runtime.errors import ArtifactError, BackendError, Florence2Error
from runtime.generation import OptionError

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 12
STATIC = dict(static=True, prompt_bucket=32, max_decode=16, static_beams=3)
TASKS = [("<OD>", None), ("<CAPTION_TO_PHRASE_GROUNDING>", "a green car parked in front of a yellow building")]
MODES = {"greedy": dict(num_beams=1, no_repeat_ngram_size=0), "beams3": dict(num_beams=3, no_repeat_ngram_size=3)}
TARGETS = ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """OpenVINO's compile cache in a temporary folder, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLORENCE2_EDGE_CACHE", str(tmp_path_factory.mktemp("contract-cache")))
        yield


@pytest.fixture(scope="module")
def reference(variant_checkpoint):
    """transformers' generate() for (variant, image index, task, text, mode), memoised."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    loaded = {}

    @functools.lru_cache(maxsize=None)
    def generate(variant: str, index: int, task: str, text: str | None, mode: str) -> list[int]:
        if variant not in loaded:
            folder = variant_checkpoint(variant)
            loaded[variant] = (Florence2ForConditionalGeneration.from_pretrained(folder).eval(),
                               AutoProcessor.from_pretrained(folder))
        model, processor = loaded[variant]
        inputs = processor(text=task + (text or ""), images=_image(index), return_tensors="pt")
        # Embedding rows past the tokenizer are padding (px128 has some): never a token, on both sides.
        padding = list(range(len(processor.tokenizer), model.config.text_config.vocab_size)) or None
        with torch.no_grad():
            return model.generate(**inputs, **MODES[mode], max_new_tokens=MAX_NEW, suppress_tokens=padding).tolist()[0]

    return generate


def _image(index: int):
    from runtime.probes import sample_image

    return sample_image(20 + index, [(640, 480), (300, 500)][index])


@pytest.mark.parametrize("form", ["dynamic", "static"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["px128", "px384"])
def test_other_image_sizes_generate_transformers_ids(variant_checkpoint, exported, reference, variant, target, form):
    artifact = exported(variant_checkpoint(variant), target, **(STATIC if form == "static" else {}))
    model = Florence2.load(artifact)
    size = {"px128": 128, "px384": 384}[variant]
    assert model.contract.dims.image_size == (size, size)
    for index in range(2):
        for task, text in TASKS:
            for mode in MODES:
                want = reference(variant, index, task, text, mode)
                assert model.generate(_image(index), task, text, **MODES[mode], max_new_tokens=MAX_NEW) == want, \
                    (variant, target, form, index, task, mode)


def test_manifest_records_the_checkpoint_shapes(variant_checkpoint, exported):
    from transformers import AutoProcessor

    artifact = exported(variant_checkpoint("px128"), "onnx")
    data = json.loads((artifact / "manifest.json").read_text())
    processor = AutoProcessor.from_pretrained(variant_checkpoint("px128"))
    tokens = processor.image_processor.image_seq_length
    assert tokens == 17  # (128 / 32)^2 + 1, read from the vision tower at build time
    assert data["dims"]["image_size"] == [128, 128] and data["dims"]["image_tokens"] == tokens
    vision = data["graphs"]["vision_encoder"]
    assert vision["inputs"]["pixel_values"]["shape"] == ["batch", 3, 128, 128]
    assert vision["outputs"]["image_features"]["shape"] == ["batch", tokens, 64]
    assert data["dims"]["vocab_size"] == 1664 and data["dims"]["tokenizer_size"] == len(processor.tokenizer)


def test_static_contract_fixes_every_axis(variant_checkpoint, exported):
    artifact = exported(variant_checkpoint("px384"), "onnx", **STATIC)
    model = Florence2.load(artifact)
    dims = model.contract.dims
    for name, io in model.contract.graphs.items():
        for tensor in (*io.inputs, *io.outputs):
            assert all(isinstance(size, int) for size in tensor.shape), (name, tensor)
    decoder = model.contract.graph("decoder")
    assert decoder.input_names[:3] == ["input_ids", "position", "encoder_attention_mask"]
    assert decoder.tensor("past.2.value").shape == (3, dims.decoder_heads, 16, dims.head_dim)
    assert decoder.tensor("present.0.key").shape == (3, dims.decoder_heads, 1, dims.head_dim)
    with model.profile() as stages:  # one generation path: a static artifact reports its decode stage too
        model.generate([_image(0), _image(1)], "<OD>", max_new_tokens=4)
    assert set(stages) == {"preprocess", "vision", "encoder", "decode"} and stages["decode"] > 0


def test_image_seq_length_disagreeing_with_the_tower_is_one_line(variant_checkpoint, tmp_path):
    from export.errors import ExportError
    from export.pipeline import run_export

    folder = Path(shutil.copytree(variant_checkpoint("px128"), tmp_path / "bad"))
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["image_seq_length"] = 577
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"image_seq_length is 577, but the vision tower gives 17 tokens for 128x128") as err:
        run_export(str(folder), "onnx", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_padded_vocabulary_rows_are_never_chosen(variant_checkpoint, exported, tmp_path_factory):
    """px128 has 1664 embedding rows for 1602 tokens. With the padding rows made the most attractive
    (scaled copies of real rows), transformers picks them unless told to suppress them; the runtime
    must never emit one, and must match transformers with the suppression."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    folder = Path(shutil.copytree(variant_checkpoint("px128"), tmp_path_factory.mktemp("padded") / "px128-padded"))
    state = load_file(str(folder / "model.safetensors"))
    table = state["model.language_model.shared.weight"]
    cut = len(AutoProcessor.from_pretrained(folder).tokenizer)
    table[cut:] = 3.0 * table[4:4 + len(table) - cut]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = Florence2.load(exported(folder, "onnx"))
    hf, processor = Florence2ForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    rows = model.contract.dims.vocab_size
    assert (model.contract.dims.tokenizer_size, rows) == (cut, 1664)
    picked_padding = False
    for index in range(2):
        inputs = processor(text="<CAPTION>", images=_image(index), return_tensors="pt")
        with torch.no_grad():
            want = hf.generate(**inputs, max_new_tokens=20, num_beams=1, suppress_tokens=list(range(cut, rows))).tolist()[0]
            free = hf.generate(**inputs, max_new_tokens=20, num_beams=1).tolist()[0]
        got = model.generate(_image(index), "<CAPTION>", max_new_tokens=20, num_beams=1)
        assert got == want and max(got) < cut
        picked_padding |= max(free) >= cut
    assert picked_padding


# ---------------------------------------------------------------------------------------- declared tasks

DECLARED = {
    "<MY_OD>": {"prompt": "Locate the objects with category name in the image.", "parse_type": "description_with_bboxes"},
    "<DocVQA>": {"prompt": "What text is in the region {input}", "parse_type": "pure_text", "takes_text": True},
}


def test_declared_task_goes_from_export_to_parsed_answer(variant_checkpoint, exported, tmp_path):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    folder = variant_checkpoint("px128")
    model = Florence2.load(exported(folder, "onnx", tasks=DECLARED))
    assert model.tasks["<MY_OD>"].parse_type == "description_with_bboxes" and model.tasks["<DocVQA>"].takes_input
    hf, processor = Florence2ForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    image = _image(0)
    # transformers has no place for the task: given its prompt text, it runs the same model input.
    inputs = processor(text=DECLARED["<MY_OD>"]["prompt"], images=image, return_tensors="pt")
    with torch.no_grad():
        want = hf.generate(**inputs, max_new_tokens=MAX_NEW).tolist()[0]
    run = model.run(image, "<MY_OD>", max_new_tokens=MAX_NEW)[0]
    assert run.ids == want
    expected = processor.post_process_generation(run.text, task="<OD>", image_size=image.size)["<OD>"]
    assert run.answer == {"<MY_OD>": expected}
    # The declared parse type reads boxes from text; parse() with the built-in table reads it as text.
    text = "</s><s>widget<loc_100><loc_200><loc_300><loc_400></s>"
    assert parse(text, "<MY_OD>", (640, 480), tasks=model.tasks)["<MY_OD>"]["labels"] == ["widget"]
    assert isinstance(parse(text, "<MY_OD>", (640, 480))["<MY_OD>"], str)
    assert isinstance(model(image, "<DocVQA>", "<loc_1><loc_2><loc_3><loc_4>", max_new_tokens=4)["<DocVQA>"], str)


@pytest.mark.parametrize("declared, message", [
    ({"<OD>": {"prompt": "Find.", "parse_type": "bboxes"}}, "already defined by the checkpoint"),
    ({"<X>": {"prompt": "Find.", "parse_type": "boxes"}}, "unknown parse_type 'boxes'; expected one of pure_text"),
    ({"<X>": {"prompt": "Find.", "parse_type": "bboxes", "takes_text": True}}, r"needs an \{input\} field"),
    ({"<X>": {"prompt": "Find {thing}.", "parse_type": "bboxes"}}, r"one \{input\} field and no other"),
    ({"MY TASK": {"prompt": "Find.", "parse_type": "bboxes"}}, "expected a task token"),
    ({"<X>": "Find."}, 'expected {"prompt": str'),
    ({}, "expected a JSON object"),
])
def test_declared_tasks_are_validated(declared, message):
    from runtime.tasks import TASKS, TaskDeclarationError, declare_tasks

    with pytest.raises(TaskDeclarationError, match=message):
        declare_tasks(TASKS, declared)


def test_export_cli_refuses_a_bad_tasks_file(tmp_path):
    bad = tmp_path / "tasks.json"
    bad.write_text(json.dumps({"<CAPTION>": {"prompt": "x", "parse_type": "pure_text"}}))
    cases = [(bad, "already defined by the checkpoint"), (tmp_path / "absent.json", "no such file")]
    (tmp_path / "broken.json").write_text("{not json")
    cases.append((tmp_path / "broken.json", "not a readable JSON file"))
    for path, message in cases:
        proc = subprocess.run([sys.executable, "-m", "export", "--target", "onnx", "--tasks", str(path),
                               "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert message in lines[-1] and lines[-1].startswith("export: error: --tasks") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- options and limits

@pytest.fixture(scope="module")
def px128(variant_checkpoint, exported):
    return Florence2.load(exported(variant_checkpoint("px128"), "onnx"))


@pytest.mark.parametrize("options, message", [
    (dict(vocab_size=None), "vocab_size is fixed by the artifact"),
    (dict(eos_token_id=5), "eos_token_id is fixed by the artifact"),
    (dict(temperature=0.5), "unknown generation option"),
    (dict(num_beams=0), "num_beams must be an int >= 1"),
    (dict(min_new_tokens=30, max_new_tokens=5), "min_new_tokens must be <= max_new_tokens"),
    (dict(max_new_tokens=1025), "more than this model's 1024 decoder positions"),
])
def test_bad_options_are_one_error_class(px128, options, message):
    with pytest.raises(OptionError if "positions" not in message else LimitError, match=message) as err:
        px128.generate(_image(0), "<OD>", **options)
    assert isinstance(err.value, Florence2Error) and isinstance(err.value, ValueError)


def test_a_prompt_beyond_the_positions_is_refused_before_running(px128):
    text = " ".join(["car"] * 1100)
    with pytest.raises(LimitError, match=r"the prompt is \d+ tokens; this model takes at most 1007"):
        px128.generate(_image(0), "<CAPTION_TO_PHRASE_GROUNDING>", text)


def test_graph_inputs_are_checked_at_the_boundary(px128):
    vision = px128.graphs["vision_encoder"]
    with pytest.raises(BackendError, match=r"expected shape \['batch', 3, 128, 128\]|expected shape \[1, 3, 128, 128\]"):
        vision.run({"pixel_values": np.zeros((1, 3, 768, 768), dtype=np.float32)})
    with pytest.raises(BackendError, match="expected float32 with shape"):
        vision.run({"pixel_values": np.zeros((1, 3, 128, 128), dtype=np.float64)})


# ------------------------------------------------------------------------------------------ the manifest

@pytest.fixture()
def artifact(variant_checkpoint, exported, tmp_path):
    return Path(shutil.copytree(exported(variant_checkpoint("px128"), "onnx"), tmp_path / "artifact"))


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _set(keys: str, value):
    def change(data):
        target = data
        *parents, last = keys.split(".")
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
        return data
    return change


_DELETE = object()

MALFORMED = [
    (lambda d: [], "expected a JSON object, got list"),
    (lambda d: None, "expected a JSON object, got NoneType"),
    (_set("format_version", 0), "no valid format_version"),
    (_set("format_version", 1), "written by an older florence2-edge; this runtime reads 2: export the model again"),
    (_set("graphs.decoder.file", _DELETE), "manifest.graphs.decoder: missing field 'file'"),
    (_set("tasks.<OD>", "Locate the objects"), "manifest.tasks.<OD>: expected an object, got str"),
    (_set("generation.num_beams", "three"), "manifest.generation.num_beams: expected an integer, got 'three'"),
    (_set("dims.decoder_layers", 3), "graphs.encoder.outputs: expected encoder_hidden_states, cross.0.key"),
    (_set("dims.image_size", [768, 768]), "preprocessing.size 128x128 differs from dims.image_size 768x768"),
    (_set("tokens.eos", 99999), "tokens.eos: expected an id below tokenizer_size"),
    (_set("tasks.<OD>.parse_type", "boxes"), "tasks.<OD>.parse_type: expected one of"),
    (_set("target", "tflite"), "target: expected one of onnx, openvino, coreml"),
    (_set("mystery", 1), "unexpected field 'mystery'"),
    (_set("generation.num_beams", 0), "generation: num_beams must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("change, message", MALFORMED)
def test_malformed_manifest_is_one_line_naming_the_field(artifact, change, message):
    _edit(artifact, change)
    # verify=False: the checksum (which any edit breaks, see below) is not what is tested here.
    with pytest.raises(ArtifactError, match=_escape(message)) as err:
        Florence2.load(artifact, verify=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ArtifactError):  # and it is never re-sealed
        from runtime.manifest import seal

        seal(artifact)


def _escape(message: str) -> str:
    import re

    return re.escape(message)


def test_edited_manifest_is_refused_until_resealed(artifact, images):
    before = Florence2.load(artifact).generate(images[0], "<OD>", max_new_tokens=6)
    _edit(artifact, _set("preprocessing.image_mean", [0.5, 0.5, 0.5]))
    with pytest.raises(ArtifactError, match="was changed after export .*python -m runtime.manifest seal"):
        Florence2.load(artifact)
    assert Florence2.load(artifact, verify=False).contract.dims.image_size == (128, 128)  # verify=False trusts it
    proc = subprocess.run([sys.executable, "-m", "runtime.manifest", "seal", str(artifact)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "sealed" in proc.stdout, proc.stderr
    after = Florence2.load(artifact).generate(images[0], "<OD>", max_new_tokens=6)
    assert len(after) >= 2 and before[0] == after[0]  # loads and runs with the deliberate edit


def test_reference_uses_no_deprecated_transformers_argument(px128, variant_checkpoint):
    """transformers 5.24 deprecates `past_key_values` for BartDecoder (removed in 5.40): the gate's
    references must not trip that FutureWarning (the suite ignores FutureWarning globally)."""
    from transformers import Florence2ForConditionalGeneration

    from export.references import reference_outputs
    from runtime.probes import graph_cases

    model = Florence2ForConditionalGeneration.from_pretrained(variant_checkpoint("px128")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in ("encoder", "decoder"):
            for case in graph_cases(px128.contract, name):
                reference_outputs(name, model, case, px128.contract)


def test_npu_on_onnxruntime_is_configured_or_refused(variant_checkpoint, exported):
    from platforms import PlatformError
    from platforms.onnxruntime import provider_plan

    plan = provider_plan("npu", ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert plan.providers == ["OpenVINOExecutionProvider"] and plan.options == [{"device_type": "NPU"}]
    assert plan.config == {"session.disable_cpu_ep_fallback": "1"} and plan.strict
    assert provider_plan("npu", ["QNNExecutionProvider", "CPUExecutionProvider"]).providers == ["QNNExecutionProvider"]
    with pytest.raises(PlatformError, match="device 'npu' is not available in this onnxruntime build"):
        provider_plan("npu", ["CPUExecutionProvider"])
    # This machine has no NPU provider: loading a static ONNX artifact on "npu" is refused, not run on the CPU.
    artifact = exported(variant_checkpoint("px128"), "onnx", **STATIC)
    with pytest.raises(BackendError, match="device 'npu' is not available") as err:
        Florence2.load(artifact, device="npu")
    assert "\n" not in str(err.value)
