"""The original Microsoft layout (trust_remote_code): the tiny native checkpoint written back the way the
remote code saves it (key names, config keys and tokenizer as in microsoft/Florence-2-*'s
modeling_florence2.py / configuration_florence2.py / processing_florence2.py) exports to the same
tokens as the native one, without any of its .py files being imported."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import sys

import pytest
import torch

from export.loading import load_checkpoint
from export.embedded import GENERATION_DEFAULTS
from export.vocabulary import FLORENCE_TOKENS, IMAGE_TOKEN
from export.errors import ExportError
from export.original_layout import is_original_layout, load_original
from export.pipeline import run_export
from runtime import Florence2

REMOTE_CODE = ("configuration_florence2", "modeling_florence2", "processing_florence2")
MARKER = "REMOTE_CODE_WAS_RUN"
MISMATCHED_IDS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}  # seen in fine-tunes
MODES = {"greedy": dict(num_beams=1, no_repeat_ngram_size=0), "beams3": dict(num_beams=3, no_repeat_ngram_size=3)}
TASKS = [("<CAPTION>", None), ("<OD>", None), ("<OCR_WITH_REGION>", None),
         ("<CAPTION_TO_PHRASE_GROUNDING>", "a green car parked in front of a yellow building")]

# Native -> original names, the inverse of what transformers' conversion script does, from the
# original module tree: ConvEmbed.proj, PreNorm(norm, fn) around DepthWiseConv2d.dw / WindowAttention /
# ChannelAttention / Mlp.net, and Florence2LanguageForConditionalGeneration under `language_model`.
TO_ORIGINAL = (
    (r"model\.vision_tower\.convs\.(\d+)\.conv\.", r"vision_tower.convs.\1.proj."),
    (r"\.(conv[12])\.(weight|bias)$", r".\1.fn.dw.\2"),
    (r"\.spatial_block\.norm1\.", ".spatial_block.window_attn.norm."),
    (r"\.channel_block\.norm1\.", ".channel_block.channel_attn.norm."),
    (r"\.(window_attn|channel_attn)\.(qkv|proj)\.", r".\1.fn.\2."),
    (r"_block\.norm2\.", "_block.ffn.norm."),
    (r"\.ffn\.(fc[12])\.", r".ffn.fn.net.\1."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.image_projection\.weight$", "image_projection"),
    (r"^model\.multi_modal_projector\.image_position_embed\.", "image_pos_embed."),
    (r"^model\.multi_modal_projector\.", ""),
    (r"^model\.language_model\.", "language_model.model."),
)
SHARED = "language_model.model.shared.weight"


def native_state(folder) -> dict:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    for alias in ("lm_head.weight", "model.language_model.encoder.embed_tokens.weight"):
        state.setdefault("model.language_model.shared.weight", state.get(alias))
    return state


def vocabulary_order(native_dir) -> list[int]:
    """Native ids in original order: BART's vocab.json (<mask> last), then the tokens the original
    processor adds, then `<image>` (the native tiny tokenizer has `<image>` before the Florence tokens)."""
    data = json.loads((native_dir / "tokenizer.json").read_text())
    ids = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]}}
    return sorted(data["model"]["vocab"].values()) + [ids["<mask>"]] + [ids[t] for t in FLORENCE_TOKENS + [IMAGE_TOKEN]]


def original_state(native_dir, rows: int | None = None, tied_aliases: bool = False) -> dict:
    state, order = native_state(native_dir), vocabulary_order(native_dir)
    out = {}
    for key, tensor in state.items():
        if key == "lm_head.weight" or key.endswith("embed_tokens.weight"):
            continue
        name = key
        for pattern, replacement in TO_ORIGINAL:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor.t().contiguous() if name == "image_projection" else tensor.clone()
    out[SHARED] = out[SHARED][order[: rows or len(order)]].contiguous()
    out["language_model.final_logits_bias"] = torch.zeros(1, out[SHARED].shape[0])
    if tied_aliases:  # what torch.save(model.state_dict()) of the remote model holds
        for alias in ("language_model.model.encoder.embed_tokens.weight",
                      "language_model.model.decoder.embed_tokens.weight", "language_model.lm_head.weight"):
            out[alias] = out[SHARED]
    return out


def original_config(native_dir, rows: int) -> dict:
    native = json.loads((native_dir / "config.json").read_text())
    text, vision = native["text_config"], native["vision_config"]
    arch = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
            "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings", "activation_function", "scale_embedding")
    return {
        "_name_or_path": "florence2", "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config",
                     "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
        "bos_token_id": 0, "eos_token_id": 2, "ignore_index": -100, "model_type": "florence2", "pad_token_id": 1,
        "projection_dim": vision["projection_dim"], "vocab_size": rows, "torch_dtype": "float32",
        "transformers_version": "4.41.0.dev0", "is_encoder_decoder": True,
        "text_config": {
            "model_type": "florence2_language", "vocab_size": rows, **{k: text[k] for k in arch},
            "activation_dropout": 0.1, "add_bias_logits": False, "add_final_layer_norm": False, "attention_dropout": 0.1,
            "bos_token_id": 0, "classif_dropout": 0.1, "classifier_dropout": 0.0, "decoder_layerdrop": 0.0,
            "decoder_start_token_id": 2, "dropout": 0.1, "early_stopping": True, "encoder_layerdrop": 0.0,
            "eos_token_id": 2, "forced_eos_token_id": 2, "forced_bos_token_id": 0, "gradient_checkpointing": False,
            "init_std": 0.02, "is_encoder_decoder": True, "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
            "no_repeat_ngram_size": 3, "normalize_before": False, "num_hidden_layers": text["encoder_layers"],
            "pad_token_id": 1, "num_beams": 3,
        },
        "vision_config": {
            "model_type": "davit", "drop_path_rate": 0.1, "patch_size": vision["patch_size"],
            "patch_stride": vision["patch_stride"], "patch_padding": vision["patch_padding"],
            "patch_prenorm": vision["patch_prenorm"], "enable_checkpoint": False, "dim_embed": vision["embed_dim"],
            "num_heads": vision["num_heads"], "num_groups": vision["num_groups"], "depths": vision["depths"],
            "window_size": vision["window_size"], "projection_dim": vision["projection_dim"],
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": vision["max_temporal_embeddings"]},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": vision["max_position_embeddings"]},
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
    }


def write_tokenizer(native_dir, folder, as_tokenizer_json: bool) -> None:
    """A plain BART tokenizer, without the Florence tokens (the original processor adds them)."""
    data = json.loads((native_dir / "tokenizer.json").read_text())
    mask = next(t for t in data["added_tokens"] if t["content"] == "<mask>")
    if as_tokenizer_json:
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= mask["id"]]
        (folder / "tokenizer.json").write_text(json.dumps(data))
    else:
        vocab = {**data["model"]["vocab"], "<mask>": mask["id"]}  # BART's vocab.json holds <mask>
        (folder / "vocab.json").write_text(json.dumps(vocab))
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"model_max_length": 1024, "tokenizer_class": "BartTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "mask_token": "<mask>", "add_prefix_space": False, "errors": "replace"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_original(native_dir, folder, weights: str = "safetensors", generation: dict | None = None,
                   rows: int | None = None, drop: str | None = None, as_tokenizer_json: bool = False):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = original_state(native_dir, rows, tied_aliases=weights == "bin")
    if drop:
        del state[drop]
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(original_config(native_dir, state[SHARED].shape[0])))
    write_tokenizer(native_dir, folder, as_tokenizer_json)
    native = json.loads((native_dir / "processor_config.json").read_text())["image_processor"]  # its size
    preprocessor = {
        "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
        "crop_size": native["size"], "do_center_crop": False, "do_convert_rgb": None,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "CLIPImageProcessor", "image_seq_length": native["image_seq_length"],
        "image_std": [0.229, 0.224, 0.225], "processor_class": "Florence2Processor", "resample": 3,
        "size": native["size"],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    generation = {**GENERATION_DEFAULTS, **(generation or {}), "transformers_version": "4.41.0.dev0"}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    for name in REMOTE_CODE:  # running any of these leaves a marker and fails
        (folder / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path(__file__).with_name({MARKER!r}).write_text({name!r})\n"
            f"raise RuntimeError('remote code {name} was imported')\n")
    return folder


def assert_no_remote_code(folder) -> None:
    """No marker, and no module loaded from the folder or under a remote-code name (transformers' own
    native florence2 modules share the file names, so they are told apart by package)."""
    assert not (folder / MARKER).exists()
    loaded = [name for name, module in list(sys.modules.items())
              if str(getattr(module, "__file__", None) or "").startswith(str(folder))
              or (name.split(".")[-1] in REMOTE_CODE and not name.startswith("transformers.models.florence2."))]
    assert not loaded


class Capture(logging.Handler):
    """The export logger's records (the suite runs with -p no:logging, so no caplog)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def permutation(tiny_checkpoint) -> dict[int, int]:
    return {native: original for original, native in enumerate(vocabulary_order(tiny_checkpoint))}


@pytest.fixture(scope="module")
def original_folder(tiny_checkpoint, tmp_path_factory):
    return write_original(tiny_checkpoint, tmp_path_factory.mktemp("original") / "Florence-2-tiny")


def export_logged(folder, output):
    capture, logger = Capture(), logging.getLogger("export")
    logger.addHandler(capture)
    try:
        manifest = run_export(str(folder), "onnx", output)
    finally:
        logger.removeHandler(capture)
    return manifest, capture.messages


@pytest.fixture(scope="module")
def original_export(original_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("original-artifact") / "onnx"
    manifest, warnings = export_logged(original_folder, output)
    return output, manifest, warnings


@pytest.fixture(scope="module")
def finetune_export(tiny_checkpoint, tmp_path_factory):
    """A fine-tune whose generation_config contradicts its tokenizer, exported to ONNX."""
    root = tmp_path_factory.mktemp("finetune")
    folder = write_original(tiny_checkpoint, root / "Florence-2-tiny-ft", generation=MISMATCHED_IDS)
    manifest, warnings = export_logged(folder, root / "artifact")
    return folder, root / "artifact", manifest, warnings


def test_layout_is_detected_from_config(original_folder, tiny_checkpoint, tmp_path):
    assert is_original_layout(original_folder)
    assert not is_original_layout(tiny_checkpoint)
    assert not is_original_layout(tmp_path / "absent")


@pytest.mark.parametrize("mode", MODES)
def test_export_generates_the_native_tokens(original_export, onnx_artifact, permutation, images, mode):
    """Same model, original vocabulary order: ids equal through the token permutation, parses equal."""
    artifact, _, warnings = original_export
    assert not warnings
    native, original = Florence2.load(onnx_artifact), Florence2.load(artifact)
    options = dict(MODES[mode], max_new_tokens=20)
    for image in images[:2]:
        for task, text in TASKS:
            want = native.generate(image, task, text, **options)
            assert original.generate(image, task, text, **options) == [permutation[i] for i in want]
            assert original(image, task, text, **options) == native(image, task, text, **options)
    # Checkpoint defaults (3 beams, no-repeat 3-grams, forced BOS/EOS) carried over too.
    want = native.generate(images[2], "<OD>", max_new_tokens=12)
    assert original.generate(images[2], "<OD>", max_new_tokens=12) == [permutation[i] for i in want]


def test_manifest_matches_the_native_one(original_export, onnx_artifact, permutation):
    _, manifest, _ = original_export
    native = json.loads((onnx_artifact / "manifest.json").read_text())
    manifest = manifest.to_dict()
    assert manifest["generation"] == native["generation"]
    assert manifest["preprocessing"] == native["preprocessing"] and manifest["tasks"] == native["tasks"]
    assert manifest["dims"] == native["dims"]
    assert native["source"]["layout"] == "native"
    assert manifest["source"]["layout"] == "original" and "keys renamed" in manifest["source"]["key_mapping"]
    assert manifest["tokens"] == {k: permutation.get(v, v) if k in ("image", "first_loc") else v
                                  for k, v in native["tokens"].items()}


def test_mismatched_generation_ids_use_the_tokenizer(finetune_export, onnx_artifact, permutation, images):
    folder, artifact, manifest, warnings = finetune_export
    native = json.loads((onnx_artifact / "manifest.json").read_text())
    data = manifest.to_dict()
    assert data["generation"] == native["generation"]
    generation = manifest.generation
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (0, 2, 1)
    tokens = manifest.tokens
    assert (tokens.bos, tokens.eos, tokens.pad, tokens.decoder_start) == (0, 2, 1, 2)
    assert tokens.first_loc == permutation[native["tokens"]["first_loc"]]
    assert tokens.image == permutation[native["tokens"]["image"]]
    fixes = [m for m in warnings if "contradict the tokenizer" in m]
    assert len(fixes) == 1 and "eos_token_id 1" in fixes[0] and '"eos_token_id": 2' in fixes[0]
    assert str(folder) in fixes[0] and "generation_config.json" in fixes[0]
    # The checkpoint defaults then generate as the native export does.
    want = Florence2.load(onnx_artifact).generate(images[0], "<OD>", max_new_tokens=12)
    assert Florence2.load(artifact).generate(images[0], "<OD>", max_new_tokens=12) == [permutation[i] for i in want]


def test_remote_code_is_never_imported(original_export, finetune_export, original_folder):
    assert_no_remote_code(finetune_export[0])
    assert_no_remote_code(original_folder)


def test_hub_download_fetches_no_code(original_folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        return str(original_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    checkpoint = load_checkpoint("microsoft/Florence-2-tiny")
    assert checkpoint.source == "microsoft/Florence-2-tiny" and checkpoint.mapping is not None
    assert calls and all(not fnmatch.fnmatch(f"{name}.py", pattern) for patterns in calls
                         for pattern in patterns for name in REMOTE_CODE)
    assert_no_remote_code(original_folder)


def test_bin_weights_load_with_weights_only(tiny_checkpoint, original_folder, tmp_path, monkeypatch):
    folder = write_original(tiny_checkpoint, tmp_path / "bin", weights="bin", as_tokenizer_json=True)
    calls, real_load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from_bin = load_original(folder)
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)
    from_safetensors = load_original(original_folder)
    want, got = from_safetensors.model.state_dict(), from_bin.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # tokenizer.json here, vocab.json + merges.txt there: the same rebuilt tokenizer
    assert from_bin.processor.tokenizer.get_vocab() == from_safetensors.processor.tokenizer.get_vocab()
    assert "language_model.lm_head.weight" in from_bin.mapping.dropped
    assert_no_remote_code(folder)


def test_mapping_report(original_folder):
    mapping = load_original(original_folder).mapping
    assert mapping.transposed == ["image_projection"]
    assert "language_model.final_logits_bias" in mapping.dropped and not mapping.created
    assert mapping.renamed["image_proj_norm.weight"] == "model.multi_modal_projector.image_proj_norm.weight"
    assert mapping.renamed["vision_tower.blocks.2.1.spatial_block.conv1.fn.dw.weight"] == \
        "model.vision_tower.blocks.2.1.spatial_block.conv1.weight"
    assert f"{len(mapping.renamed)} keys renamed" in mapping.summary() and "\n" not in mapping.summary()


def test_embedding_grows_to_cover_the_image_token(tiny_checkpoint, tmp_path):
    """An embedding sized for BART + Florence tokens (as microsoft/Florence-2-*): `<image>` gets the
    next id, rows are padded to a multiple of 64 with the mean row."""
    full = len(vocabulary_order(tiny_checkpoint))
    folder = write_original(tiny_checkpoint, tmp_path / "no-image-row", rows=full - 1)
    checkpoint = load_original(folder)
    weight = checkpoint.model.get_input_embeddings().weight
    assert checkpoint.model.config.image_token_id == full - 1 == checkpoint.processor.tokenizer.image_token_id
    assert weight.shape[0] == 1664 == checkpoint.model.config.text_config.vocab_size
    torch.testing.assert_close(weight[full - 1:], weight[: full - 1].mean(0).expand(1664 - full + 1, -1))
    assert checkpoint.model.lm_head.weight.data_ptr() == weight.data_ptr()
    assert any("<image>" in how for how in checkpoint.mapping.created.values())


@pytest.mark.parametrize("key,kind", [("vision_tower.blocks.2.1.channel_block.ffn.fn.net.fc2.bias", "missing"),
                                      ("image_proj_norm.weight", "missing")])
def test_missing_key_is_one_line(tiny_checkpoint, tmp_path, key, kind):
    folder = write_original(tiny_checkpoint, tmp_path / "broken", drop=key)
    with pytest.raises(ExportError) as info:
        load_checkpoint(str(folder))
    message = str(info.value)
    assert "\n" not in message and f"1 {kind}" in message and str(folder) in message


def test_unexpected_key_is_one_line(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_original(tiny_checkpoint, tmp_path / "extra")
    state = load_file(str(folder / "model.safetensors"))
    state["vision_tower.head.weight"] = torch.zeros(10, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ExportError, match=r"1 unexpected: vision_tower\.head\.weight$") as info:
        load_checkpoint(str(folder))
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line(original_folder, tmp_path):
    import shutil

    folder = tmp_path / "no-preprocessor"
    shutil.copytree(original_folder, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ExportError, match="has no image processor file") as info:
        load_checkpoint(str(folder))
    assert "\n" not in str(info.value)
