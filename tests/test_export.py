"""The ONNX export: graphs against transformers, manifest contents and checksums, the atomic write."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.graphs import DecoderStep
from export.parity import check_graph
from export.references import reference_outputs
from export.specs import graph_specs
from platforms import open_session
from runtime.manifest import FORMAT_VERSION, GRAPH_NAMES, read_manifest, sha256_of
from runtime.probes import graph_cases


def test_every_graph_matches_transformers_on_fresh_inputs(onnx_artifact, hf_model):
    """Independent of the gate's own run: other random inputs (seed 1), same tolerance."""
    manifest = read_manifest(onnx_artifact)
    contract = manifest.contract
    for spec in graph_specs(contract):
        session = open_session("onnx", manifest.graph_path(onnx_artifact, spec.name))
        for case in graph_cases(contract, spec.name, seed=1):
            got, want = session.run(case), reference_outputs(spec.name, hf_model, case, contract)
            assert set(got) == set(spec.outputs)
            for name in spec.outputs:
                assert got[name].shape == want[name].shape, (spec.name, name)
                np.testing.assert_allclose(got[name], want[name], atol=spec.tolerance_of(name), rtol=0,
                                           err_msg=f"{spec.name}.{name}")


def test_decoder_wrapper_equals_transformers_decoder_in_torch(onnx_artifact, hf_model):
    """The hand-written step (shared cross K/V across beams) against transformers' decoder with its
    EncoderDecoderCache, in PyTorch, for an empty and a filled cache and 1 and 3 beams."""
    import torch

    contract = read_manifest(onnx_artifact).contract
    wrapper = DecoderStep(hf_model).eval()
    spec = next(s for s in graph_specs(contract) if s.name == "decoder")
    for case in graph_cases(contract, "decoder", seed=2):
        with torch.no_grad():
            got = wrapper(*(torch.from_numpy(case[name]) for name in spec.inputs))
        want = reference_outputs("decoder", hf_model, case, contract)
        for value, name in zip(got, spec.outputs):
            np.testing.assert_allclose(value.numpy(), want[name], atol=spec.tolerance_of(name), rtol=0, err_msg=name)


def test_manifest_describes_the_artifact(onnx_artifact, hf_model, hf_processor):
    data = json.loads((onnx_artifact / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["target"] == "onnx" and data["precision"] == "fp32"
    assert set(data["graphs"]) == set(GRAPH_NAMES)
    text = hf_model.config.text_config
    assert data["dims"]["d_model"] == text.d_model
    assert data["dims"]["decoder_layers"] == text.decoder_layers
    assert data["dims"]["vocab_size"] == text.vocab_size
    assert data["dims"]["tokenizer_size"] == len(hf_processor.tokenizer)
    tok = hf_processor.tokenizer
    assert data["tokens"] == {
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id,
        "image": hf_model.config.image_token_id, "decoder_start": text.decoder_start_token_id,
        "first_loc": tok.convert_tokens_to_ids("<loc_0>"),
    }
    generation = hf_model.generation_config
    assert data["generation"]["num_beams"] == generation.num_beams
    assert data["generation"]["no_repeat_ngram_size"] == generation.no_repeat_ngram_size
    assert data["preprocessing"]["size"] == {"height": 768, "width": 768}
    assert data["preprocessing"]["image_std"] == list(hf_processor.image_processor.image_std)
    ocr = data["tasks"]["<OCR_WITH_REGION>"]
    assert (ocr["prompt"], ocr["parse_type"]) == ("What is the text in the image, with regions?", "ocr")
    prompt = "What is the text in the image, with regions?"
    assert ocr["prompt_ids"] == [tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False), tok.eos_token_id]
    assert "prompt_ids" not in data["tasks"]["<CAPTION_TO_PHRASE_GROUNDING>"]  # takes text: no fixed ids
    assert data["post_processing"] == hf_processor.post_processor_config
    for name, graph in data["graphs"].items():
        path = onnx_artifact / graph["file"]
        assert graph["sha256"] == sha256_of(path) and graph["bytes"] == path.stat().st_size
        parity = graph["parity"]
        assert parity["passed"]
        for output, diff in parity["per_output"].items():
            assert diff <= parity["output_tolerances"].get(output, parity["tolerance"]), (name, output)
        assert graph["parity"]["cases"] >= 1
    heads, hd = text.decoder_attention_heads, text.d_model // text.decoder_attention_heads
    assert data["graphs"]["decoder"]["inputs"]["past.0.key"] == {
        "dtype": "float32", "shape": ["rows", heads, "past_sequence", hd]}
    assert data["graphs"]["vision_encoder"]["outputs"]["image_features"]["shape"] == ["batch", 577, text.d_model]
    assert data["dims"]["image_size"] == [768, 768] and data["dims"]["image_tokens"] == 577
    assert data["checksum"] and read_manifest(onnx_artifact).checksum == data["checksum"]
    assert data["files"]["tokenizer.json"]["sha256"] == sha256_of(onnx_artifact / "tokenizer.json")


def test_tokenizer_json_carries_every_florence_token(onnx_artifact, hf_processor):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx_artifact / "tokenizer.json"))
    reference = hf_processor.tokenizer
    assert tokenizer.get_vocab_size(with_added_tokens=True) == len(reference)
    for token in ["<loc_0>", "<loc_999>", "<poly>", "<sep>", "<od>", "<image>", "<s>", "</s>", "<pad>"]:
        assert tokenizer.token_to_id(token) == reference.convert_tokens_to_ids(token)
    text = "What is the region <loc_10><loc_20><loc_30><loc_40>?"
    assert tokenizer.encode(text, add_special_tokens=False).ids == reference.encode(text, add_special_tokens=False)


def test_onnx_dims_carry_the_declared_names(onnx_artifact):
    import onnx

    model = onnx.load(str(onnx_artifact / "decoder.onnx"), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["input_ids"] == ["rows", 1]
    assert dims["past.0.key"][0] == "rows" and dims["past.0.key"][2] == "past_sequence"
    assert dims["cross.0.key"][0] == "batch" and dims["cross.0.key"][2] == "encoder_sequence"


def test_parity_gate_lists_every_failing_output(onnx_artifact, hf_model):
    """A graph that is not the model (here: the embedding graph checked as if it were tighter than
    float equality allows, and a decoder from another seed) must fail with each output named."""
    from export.errors import ParityError
    from export.parity import GraphParity, raise_on_failures

    contract = read_manifest(onnx_artifact).contract
    spec = next(s for s in graph_specs(contract) if s.name == "decoder")
    session = open_session("onnx", onnx_artifact / "decoder.onnx")
    ok = check_graph(spec, session, hf_model, contract)
    assert not ok.failures
    broken = GraphParity("decoder", 1e-4, {"logits": 0.5, "present.0.key": 1e-6, "present.1.value": float("nan")})
    with pytest.raises(ParityError) as err:
        raise_on_failures([ok, broken])
    message = str(err.value)
    assert "decoder.logits" in message and "decoder.present.1.value" in message
    assert "present.0.key" not in message and "\n" not in message


def test_parity_gate_catches_a_wrong_graph(onnx_artifact, hf_model, tmp_path):
    """Export the decoder of a different model and check it against ours: the gate must refuse it."""
    from export.embedded import build_checkpoint
    from export.onnx_writer import write_onnx
    from transformers import Florence2ForConditionalGeneration

    other = Florence2ForConditionalGeneration.from_pretrained(build_checkpoint(tmp_path / "other", seed=7)).eval()
    contract = read_manifest(onnx_artifact).contract
    spec = next(s for s in graph_specs(contract) if s.name == "embed_tokens")
    path = write_onnx(spec, other, graph_cases(contract, spec.name)[-1], tmp_path / "embed_tokens.onnx")
    result = check_graph(spec, open_session("onnx", path), hf_model, contract)
    assert result.failures and "embed_tokens.inputs_embeds" in result.failures[0]
