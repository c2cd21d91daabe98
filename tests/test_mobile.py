"""--mobile: ORT-format graphs held to the parity gate, self-contained and loaded with prefer_ort; the
token-bytes table and prompt ids; conformance vectors our runtime passes and a tampered one fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import ArtifactError, Florence2
from runtime.manifest import read_manifest, seal
from runtime.vectors import VECTORS_NAME

REPO = Path(__file__).resolve().parents[1]
STATIC = dict(static=True, prompt_bucket=32, max_decode=20)


@pytest.fixture(scope="module")
def mobile_int8(variant_checkpoint, exported):
    """int8: the word embedding lives in a shared external-data file (quantize/tied.py)."""
    return exported(variant_checkpoint("px128"), "onnx", precision="int8", mobile=True)


@pytest.fixture(scope="module")
def mobile_static(variant_checkpoint, exported):
    return exported(variant_checkpoint("px128"), "onnx", mobile=True, **STATIC)


def conformance(*args):
    return subprocess.run([sys.executable, "-m", "runtime.conformance", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_every_graph_has_an_ort_variant_that_passed_the_gate(mobile_int8):
    import onnxruntime

    manifest = read_manifest(mobile_int8)  # every file, .ort ones included, matches its sha256
    for name, graph in manifest.graphs.items():
        ort = graph.variants["ort"]
        assert ort.file == f"{name}.ort" and (mobile_int8 / ort.file).stat().st_size == ort.bytes
        assert ort.parity["passed"] and ort.parity["fidelity_floor"] == graph.parity["fidelity_floor"]
        assert ort.parity["min_cosine"] >= ort.parity["fidelity_floor"] and ort.parity["cases"] == graph.parity["cases"]
    mobile = manifest.mobile
    assert mobile.ort_version == onnxruntime.__version__
    assert {mobile.operators_config, mobile.token_bytes, manifest.conformance} <= set(manifest.files)
    config = (mobile_int8 / mobile.operators_config).read_text()
    assert "com.microsoft;1;" in config and "DynamicQuantizeMatMul" in config
    assert str(mobile_int8.parent) not in config and "# - decoder.ort" in config  # no staging paths
    assert set(mobile.dataflow) >= {"encoder.inputs_embeds", "decoder.past.{i}.key|value", "generation"}


def test_a_damaged_ort_file_is_refused_at_load(mobile_int8, tmp_path):
    copy = Path(shutil.copytree(mobile_int8, tmp_path / "artifact"))
    with open(copy / "decoder.ort", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="decoder.ort does not match its sha256"):
        Florence2.load(copy, prefer_ort=True)


def test_the_shared_embedding_is_stored_inside_both_ort_files(mobile_int8):
    """The ORT format has no external data: what shared-<hash>.bin holds once for the .onnx graphs,
    embed_tokens.ort and decoder.ort each hold in full (docs/mobile.md gives the cost per precision)."""
    from export.mobile import embedded_tables

    manifest = read_manifest(mobile_int8)
    (shared,) = [name for name in manifest.files if name.startswith("shared-")]
    stored = embedded_tables(mobile_int8, manifest)[shared]
    assert stored == {"embed_tokens.ort": manifest.files[shared].bytes, "decoder.ort": manifest.files[shared].bytes}


def test_prefer_ort_runs_the_ort_files_alone(mobile_static, images, tmp_path):
    """Without a single .onnx file (nor external data) the .ort graphs run, and they give the .onnx
    graphs' tokens (fp32)."""
    full = Florence2.load(mobile_static, prefer_ort=True)
    copy = Path(shutil.copytree(mobile_static, tmp_path / "artifact"))
    for path in copy.glob("*.onnx"):
        path.unlink()
    alone = Florence2.load(copy, prefer_ort=True, verify=False)
    onnx = Florence2.load(mobile_static)
    for mode in (dict(num_beams=1), dict(num_beams=3, no_repeat_ngram_size=3)):
        ids = alone.generate(images[0], "<OD>", max_new_tokens=12, **mode)
        assert ids == full.generate(images[0], "<OD>", max_new_tokens=12, **mode)
        assert ids == onnx.generate(images[0], "<OD>", max_new_tokens=12, **mode)


def test_prefer_ort_without_ort_files_is_one_line(mobile_static, tmp_path):
    copy = Path(shutil.copytree(mobile_static, tmp_path / "artifact"))
    data = json.loads((copy / "manifest.json").read_text())
    for graph in data["graphs"].values():
        graph["variants"] = {}
    del data["mobile"]
    (copy / "manifest.json").write_text(json.dumps(data))
    seal(copy)
    with pytest.raises(ArtifactError, match="no ORT-format graphs; export it with --mobile"):
        Florence2.load(copy, prefer_ort=True)


def test_manifest_prompt_ids_are_the_tokenizers(mobile_int8):
    model = Florence2.load(mobile_int8)
    fixed = {token: task.prompt_ids for token, task in model.manifest.tasks.items() if task.prompt_ids}
    assert "<OD>" in fixed and "<CAPTION_TO_PHRASE_GROUNDING>" not in fixed
    for token, ids in fixed.items():
        assert list(ids) == model.tokenizer.encode(model.tasks[token].prompt)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["tasks"]["<CAPTION_TO_PHRASE_GROUNDING>"].update(prompt_ids=[0, 2]), "takes text has no fixed prompt ids"),
    (lambda d: d["tasks"]["<OD>"].update(prompt_ids=[0, 10**6]), "tasks.<OD>.prompt_ids: expected ids below"),
    (lambda d: d["graphs"]["encoder"].update(variants={}), "graphs.encoder.variants"),
    (lambda d: d["mobile"].update(token_bytes="missing.json"), "mobile.token_bytes: 'missing.json' is not listed"),
])
def test_mobile_fields_are_checked_at_load(mobile_int8, tmp_path, edit, message):
    copy = Path(shutil.copytree(mobile_int8, tmp_path / "artifact"))
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message):
        seal(copy)


def test_token_bytes_decode_like_the_tokenizer(mobile_int8):
    """Any id sequence, UTF-8 characters split across tokens and special tokens included."""
    from tokenizers import Tokenizer

    from runtime.token_bytes import decode_bytes, read_token_bytes

    manifest = read_manifest(mobile_int8)
    table = read_token_bytes(mobile_int8 / manifest.mobile.token_bytes)
    tokenizer = Tokenizer.from_file(str(mobile_int8 / "tokenizer.json"))
    assert len(table) == manifest.dims.tokenizer_size
    text = "naïve café 😀 <loc_5><loc_999></s> ok"
    cases = [tokenizer.encode(text, add_special_tokens=False).ids]
    rng = np.random.default_rng(5)
    cases += [rng.integers(0, len(table), 25).tolist() for _ in range(100)]
    for ids in cases:
        assert decode_bytes(table, ids) == tokenizer.decode(ids, skip_special_tokens=False)
    assert decode_bytes(table, cases[0]) == text


@pytest.mark.parametrize("which", ["mobile_int8", "mobile_static"])
def test_runtime_passes_its_conformance_vectors(request, which):
    folder = request.getfixturevalue(which)
    result = conformance(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    checked = {line.split()[2].rstrip(":") for line in lines[:-1]}
    assert {"resize", "pixel_values", "first_step", "greedy.ids", "beam.ids", "beam.answer", "greedy.token_bytes"} <= checked
    assert lines[-1].startswith("conformance: ") and " 0 failed (3 samples, ort graphs" in lines[-1]


def test_vectors_hold_what_a_port_needs(mobile_int8):
    vectors = json.loads((mobile_int8 / VECTORS_NAME).read_text())
    assert vectors["options"]["beam"]["num_beams"] == 3 and vectors["options"]["beam"]["no_repeat_ngram_size"] == 3
    assert vectors["options"]["greedy"]["num_beams"] == 1 and vectors["options"]["greedy"]["max_new_tokens"] == 16
    sizes = [tuple(s["image_size"]) for s in vectors["samples"]]
    assert min(w for w, _ in sizes) < 128 < max(w for w, _ in sizes)  # upscaled and downscaled inputs
    for sample in vectors["samples"]:
        assert sample["resized"]["shape"] == [128, 128, 3] and len(sample["first_step"]["ids"]) == vectors["top_k"]
        assert sample["greedy"]["ids"][:2] == [2, 0]  # decoder start, then the forced BOS


def test_a_tampered_vector_fails_its_check(mobile_int8, tmp_path):
    vectors = json.loads((mobile_int8 / VECTORS_NAME).read_text())
    sample = vectors["samples"][1]
    sample["beam"]["ids"][3] = read_manifest(mobile_int8).tokens.first_loc  # <loc_0>: unlike any other token
    sample["first_step"]["logits"][0] += 1.0
    sample["pixel_values"]["sha256"] = "0" * 64
    tampered = tmp_path / "vectors.json"
    tampered.write_text(json.dumps(vectors))
    result = conformance(mobile_int8, "--vectors", tampered)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [[line.split()[1], line.split()[2].rstrip(":")] for line in result.stdout.splitlines() if line.startswith("FAIL")]
    # The table's text of the edited ids no longer matches the recorded text either.
    assert failed == [["portrait", "pixel_values"], ["portrait", "first_step"], ["portrait", "beam.ids"],
                      ["portrait", "beam.token_bytes"]]
    assert result.stdout.splitlines()[-1].startswith("conformance: ") and " 4 failed " in result.stdout


def test_vectors_edited_inside_the_artifact_are_refused(mobile_int8, tmp_path):
    copy = Path(shutil.copytree(mobile_int8, tmp_path / "artifact"))
    path = copy / VECTORS_NAME
    path.write_text(path.read_text().replace('"top_k": 5', '"top_k": 4'))
    result = conformance(copy)
    assert result.returncode == 2 and "conformance.json does not match its sha256" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_mobile_flags_are_checked_before_any_work(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "export", *args, "--output", str(tmp_path / "o")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    for args, message in ((("--target", "openvino", "--mobile"), "--mobile is for --target onnx"),
                          (("--target", "coreml", "--conformance"), "coreml graphs cannot run here")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "o").exists()
