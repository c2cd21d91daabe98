"""Load a Florence-2 checkpoint in the original Microsoft layout (the `trust_remote_code` one) as the
transformers-native model, without importing or executing any file of the checkpoint.

The original layout: config.json with `model_type` "florence2", a DaViT `vision_config` (`dim_embed`,
`image_pos_embed`, ...) and a BART-like `text_config`; weights under the remote code's names
(`vision_tower.*`, `image_projection`, `language_model.model.*`); a plain BART tokenizer to which the
remote processor adds the Florence tokens at run time. Here the config is translated, the weights are
renamed (the rules of transformers' convert_florence2_original_pytorch_to_hf.py), the tokenizer is
rebuilt with the tokens the original processor adds plus `<image>`, and a `KeyMapping` report says
what was renamed, dropped and created.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runtime.tasks import DEFAULT_POST_PROCESSOR_CONFIG

from .checkpoint import Checkpoint
from .owners import scratch_folder
from .vocabulary import FLORENCE_TOKENS, IMAGE_TOKEN
from .errors import ExportError

log = logging.getLogger("export")

# Original key -> native key. Each original key must match exactly one rule (re.fullmatch).
_BLOCK = r"vision_tower\.blocks\.(\d+\.\d+)\."
_NATIVE_BLOCK = r"model.vision_tower.blocks.\1."
RENAME_RULES = (
    (r"vision_tower\.convs\.(\d+)\.proj\.(weight|bias)", r"model.vision_tower.convs.\1.conv.\2"),
    (r"vision_tower\.convs\.(\d+)\.norm\.(weight|bias)", r"model.vision_tower.convs.\1.norm.\2"),
    (_BLOCK + r"(spatial|channel)_block\.(conv[12])\.fn\.dw\.(weight|bias)", _NATIVE_BLOCK + r"\2_block.\3.\4"),
    (_BLOCK + r"spatial_block\.window_attn\.norm\.(weight|bias)", _NATIVE_BLOCK + r"spatial_block.norm1.\2"),
    (_BLOCK + r"channel_block\.channel_attn\.norm\.(weight|bias)", _NATIVE_BLOCK + r"channel_block.norm1.\2"),
    (_BLOCK + r"(spatial_block\.window_attn|channel_block\.channel_attn)\.fn\.(qkv|proj)\.(weight|bias)",
     _NATIVE_BLOCK + r"\2.\3.\4"),
    (_BLOCK + r"(spatial|channel)_block\.ffn\.norm\.(weight|bias)", _NATIVE_BLOCK + r"\2_block.norm2.\3"),
    (_BLOCK + r"(spatial|channel)_block\.ffn\.fn\.net\.(fc[12])\.(weight|bias)", _NATIVE_BLOCK + r"\2_block.ffn.\3.\4"),
    # A bare Parameter [dim_embed[-1], projection_dim] used as `x @ P`; nn.Linear keeps P.T.
    (r"image_projection", r"model.multi_modal_projector.image_projection.weight"),
    (r"image_proj_norm\.(weight|bias)", r"model.multi_modal_projector.image_proj_norm.\1"),
    (r"image_pos_embed\.(row|column)_embeddings\.weight",
     r"model.multi_modal_projector.image_position_embed.\1_embeddings.weight"),
    (r"visual_temporal_embed\.pos_idx_to_embed", r"model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"),
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
)
TRANSPOSED = {"image_projection"}
SHARED = "model.language_model.shared.weight"
# Tied to the shared embedding in both implementations: present or not depending on how it was saved.
TIED = {"model.language_model.encoder.embed_tokens.weight", "model.language_model.decoder.embed_tokens.weight",
        "language_model.lm_head.weight"}
FINAL_LOGITS_BIAS = "language_model.final_logits_bias"  # a zero buffer in the original; the native model has none

# The original configuration classes' defaults (configuration_florence2.py of microsoft/Florence-2-*),
# used for keys a config.json leaves out, as the remote code would.
ORIGINAL_VISION_DEFAULTS = dict(
    drop_path_rate=0.1, patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
    patch_prenorm=[False, True, True, True], dim_embed=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
    num_groups=[8, 16, 32, 64], depths=[1, 1, 9, 1], window_size=12, projection_dim=1024,
    image_feature_source=["spatial_avg_pool", "temporal_avg_pool"],
)
ORIGINAL_TEXT_DEFAULTS = dict(
    vocab_size=51289, max_position_embeddings=1024, encoder_layers=12, encoder_ffn_dim=4096,
    encoder_attention_heads=16, decoder_layers=12, decoder_ffn_dim=4096, decoder_attention_heads=16,
    encoder_layerdrop=0.0, decoder_layerdrop=0.0, activation_function="gelu", d_model=1024, dropout=0.1,
    attention_dropout=0.0, activation_dropout=0.0, init_std=0.02, scale_embedding=False,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    forced_bos_token_id=None,
)
# Generation settings the remote code took from text_config (its language model generated with them).
TEXT_GENERATION_KEYS = ("num_beams", "no_repeat_ngram_size", "early_stopping", "length_penalty", "max_length",
                        "min_length", "forced_bos_token_id", "forced_eos_token_id", "bos_token_id",
                        "eos_token_id", "pad_token_id", "decoder_start_token_id")
IMAGE_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                        "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
EMBEDDING_MULTIPLE = 64  # as transformers' conversion pads the resized embedding


@dataclass
class KeyMapping:
    """What happened to each original weight on its way to the native model."""

    renamed: dict[str, str] = field(default_factory=dict)  # original key -> native key
    transposed: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # original key -> why
    created: dict[str, str] = field(default_factory=dict)  # native key -> how
    cast: str | None = None  # e.g. "float16 -> float32"

    def summary(self) -> str:
        parts = [f"{len(self.renamed)} keys renamed"]
        parts += [f"{key} transposed" for key in self.transposed]
        parts += [f"dropped {key} ({why})" for key, why in self.dropped.items()]
        parts += [f"created {key} ({how})" for key, how in self.created.items()]
        if self.cast:
            parts.append(f"cast {self.cast}")
        return "original layout: " + ", ".join(parts)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ExportError(f"{path} is not valid JSON: {err}") from None


def is_original_layout(folder: str | Path) -> bool:
    """True for a folder whose config.json describes the remote-code Florence-2 (DaViT vision config)."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    if not isinstance(config, dict) or config.get("model_type") != "florence2":
        return False
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        return False
    return vision.get("model_type") == "davit" or "dim_embed" in vision


def load_original(folder: str | Path) -> Checkpoint:
    """Build the native `Florence2ForConditionalGeneration` (fp32, eager), its processor and generation
    config from an original-layout folder. `checkpoint.mapping` holds the `KeyMapping` report."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    folder = Path(folder)
    check_original_folder(folder)
    raw = _read_json(folder / "config.json")
    tokenizer = build_tokenizer(folder)
    state, mapping = map_weights(read_weights(folder))
    declared = (raw.get("text_config") or {}).get("vocab_size", ORIGINAL_TEXT_DEFAULTS["vocab_size"])
    rows = _embedding_rows(state, tokenizer, mapping, default=declared)
    config = native_config(raw, vocab_size=rows, image_token_id=tokenizer.image_token_id)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = Florence2ForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32)
    _check_keys(state, model, folder)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the native model creates outside its state dict: a transformers change to follow
        raise ExportError(f"native model tensors not filled from the checkpoint: {', '.join(left[:3])}")
    model.eval()
    model.generation_config = generation_config(folder, raw.get("text_config") or {}, tokenizer)
    processor = build_processor(folder, tokenizer, model)
    return Checkpoint(model=model, processor=processor, generation_config=model.generation_config,
                      source=str(folder.resolve()), mapping=mapping)


def check_original_folder(folder: Path) -> None:
    """Refuse, with one line and before any heavy work, a folder missing one of the files needed."""
    needs = (("weights", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                          "pytorch_model.bin.index.json")),
             ("tokenizer", ("tokenizer.json", "vocab.json")), ("image processor", ("preprocessor_config.json",)))
    for kind, names in needs:
        if not any((folder / name).is_file() for name in names):
            raise ExportError(f"{folder} (original layout) has no {kind} file: expected one of {', '.join(names)}")


def native_config(raw: dict, vocab_size: int, image_token_id: int):
    """The native `Florence2Config` for an original config.json (vision: DaViT keys renamed; text: BART)."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    vision = {**ORIGINAL_VISION_DEFAULTS, **(raw.get("vision_config") or {})}
    _check_vision_variant(vision)
    text = {**ORIGINAL_TEXT_DEFAULTS, **(raw.get("text_config") or {})}
    text_config = BartConfig(**{key: text[key] for key in ORIGINAL_TEXT_DEFAULTS}, is_encoder_decoder=True)
    text_config.vocab_size = vocab_size  # the weights decide, after the `<image>` row is ensured
    vision_config = Florence2VisionConfig(
        embed_dim=list(vision["dim_embed"]), num_heads=list(vision["num_heads"]), num_groups=list(vision["num_groups"]),
        depths=list(vision["depths"]), window_size=vision["window_size"], projection_dim=vision["projection_dim"],
        patch_size=list(vision["patch_size"]), patch_stride=list(vision["patch_stride"]),
        patch_padding=list(vision["patch_padding"]), patch_prenorm=list(vision["patch_prenorm"]),
        drop_path_rate=vision["drop_path_rate"],
        max_temporal_embeddings=vision["visual_temporal_embedding"].get("max_temporal_embeddings", 100),
        max_position_embeddings=vision["image_pos_embed"].get("max_pos_embeddings", 50),
    )
    return Florence2Config(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                           image_token_id=image_token_id)


def _check_vision_variant(vision: dict) -> None:
    """The native model implements one variant of each option the remote code switches on."""
    expected = {
        "image_pos_embed.type": ("learned_abs_2d", (vision.get("image_pos_embed") or {}).get("type")),
        "visual_temporal_embedding.type": ("COSINE", (vision.get("visual_temporal_embedding") or {}).get("type")),
        "image_feature_source": (["spatial_avg_pool", "temporal_avg_pool"], list(vision["image_feature_source"])),
    }
    for name, (want, got) in expected.items():
        if got != want:
            raise ExportError(f"vision_config.{name} {got!r} is not supported: "
                              f"the transformers-native Florence-2 implements {want!r}")


def build_tokenizer(folder: Path):
    """The checkpoint's BART tokenizer plus, in the original processor's order, every token it adds
    at run time, then `<image>` as transformers' conversion adds it (so its id follows them)."""
    from transformers import AddedToken, BartTokenizer

    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer.json" not in present and not {"vocab.json", "merges.txt"} <= set(present):
        raise ExportError(f"{folder} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt")
    # A folder holding only the tokenizer files: nothing else of the checkpoint is visible to the loader.
    with scratch_folder("tokenizer") as scratch:
        for name in present:
            shutil.copyfile(folder / name, Path(scratch) / name)
        tokenizer = BartTokenizer.from_pretrained(scratch)
    # The remote processor: add_special_tokens({'additional_special_tokens': existing + Florence tokens}).
    tokenizer.add_special_tokens({"extra_special_tokens": FLORENCE_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    # Plain attributes, as the conversion script sets them; Florence2Processor reads both.
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return tokenizer


def build_processor(folder: Path, tokenizer, model):
    from transformers import CLIPImageProcessorPil, Florence2Processor

    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no preprocessor_config.json (the image settings)")
    settings = _read_json(path)
    kind = settings.get("image_processor_type", "CLIPImageProcessor")
    if kind not in ("CLIPImageProcessor", "CLIPImageProcessorFast"):
        raise ExportError(f"{path}: image_processor_type {kind!r} is not supported: expected 'CLIPImageProcessor'")
    # None (e.g. the shipped "do_convert_rgb": null) means the processor's default, as in the original.
    values = {key: settings[key] for key in IMAGE_PROCESSOR_KEYS if settings.get(key) is not None}
    image_processor = CLIPImageProcessorPil(**values)
    # The count the vision tower really gives at this size, where the settings leave it out (a
    # declared one that disagrees is reported by export/facts.py).
    if settings.get("image_seq_length") is None:
        from .facts import image_size_of, image_token_count

        image_processor.image_seq_length = image_token_count(model, image_size_of(image_processor))
    else:
        image_processor.image_seq_length = settings["image_seq_length"]
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                              post_processor_config=DEFAULT_POST_PROCESSOR_CONFIG)


def generation_config(folder: Path, text: dict, tokenizer):
    """generation_config.json over the text_config generation keys (what the remote code generated
    with), with token ids that contradict the tokenizer replaced by the tokenizer's."""
    from transformers import GenerationConfig

    merged = {key: value for key, value in {**ORIGINAL_TEXT_DEFAULTS, **text}.items() if key in TEXT_GENERATION_KEYS}
    path = folder / "generation_config.json"
    if path.is_file():
        merged.update(_read_json(path))
    # decoder_start: the id training shifted labels with (text_config), which the tokenizer cannot tell.
    expected = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "decoder_start_token_id": {**ORIGINAL_TEXT_DEFAULTS, **text}["decoder_start_token_id"]}
    if merged.get("forced_bos_token_id") is not None:
        expected["forced_bos_token_id"] = tokenizer.bos_token_id
    if merged.get("forced_eos_token_id") is not None:
        expected["forced_eos_token_id"] = tokenizer.eos_token_id
    wrong = {key: merged.get(key) for key, want in expected.items() if merged.get(key) not in (want, [want])}
    if wrong:
        found = ", ".join(f"{key} {value}" for key, value in wrong.items())
        fix = ", ".join(f'"{key}": {expected[key]}' for key in wrong)
        log.warning("%s: generation token ids contradict the tokenizer (%s); using the tokenizer's. "
                    "Fix: set %s in generation_config.json", folder, found, fix)
        merged.update({key: expected[key] for key in wrong})
    return GenerationConfig.from_dict(merged)


def read_weights(folder: Path) -> dict:
    """Original key -> tensor, from the files export/weights.py picks (safetensors when present; a .bin
    only through weights_only unpickling), each checked first: a damaged one is one line naming it."""
    from .weights import read_weight_file, weight_files

    files = weight_files(folder)
    if not files:
        raise ExportError(f"{folder} has no weights: expected model.safetensors or pytorch_model.bin (or a sharded index)")
    state = {}
    for path in files:
        if not path.is_file():
            raise ExportError(f"{path} is missing: {folder} lists it in its weights index")
        state.update(read_weight_file(path))
    return state


def _rename(key: str) -> str | None:
    for pattern, replacement in RENAME_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def map_weights(original: dict) -> tuple[dict, KeyMapping]:
    """Native key -> fp32 tensor, and the report. Unknown original keys are kept under their own name
    so the key check lists them as unexpected."""
    mapping, state, tied = KeyMapping(), {}, {}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in original.values() if t.is_floating_point()}
    if dtypes - {"float32"}:
        mapping.cast = f"{', '.join(sorted(dtypes))} -> float32"
    for key, tensor in original.items():
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        if key == FINAL_LOGITS_BIAS:
            _drop_logits_bias(tensor, mapping)
            continue
        native = key if key in TIED else _rename(key)
        if native in TIED:
            tied[key] = tensor
            continue
        if native is None:
            state[key] = tensor
            continue
        if key in TRANSPOSED:
            tensor = tensor.t()
            mapping.transposed.append(key)
        state[native] = tensor.contiguous()
        mapping.renamed[key] = native
    _fold_tied(state, tied, mapping)
    return state, mapping


def _drop_logits_bias(tensor, mapping: KeyMapping) -> None:
    if bool((tensor != 0).any()):
        raise ExportError(f"{FINAL_LOGITS_BIAS} is not zero: "
                          "the transformers-native Florence-2 has no logits bias to carry it")
    mapping.dropped[FINAL_LOGITS_BIAS] = "all zeros, unused"


def _fold_tied(state: dict, tied: dict, mapping: KeyMapping) -> None:
    """The original ties encoder/decoder embed_tokens and lm_head to `shared`; a save keeps any subset."""
    import torch

    if SHARED not in state and tied:
        first = sorted(tied)[0]
        state[SHARED] = tied[first]
        mapping.created[SHARED] = f"from {first}"
    for key, tensor in tied.items():
        if SHARED in state and not torch.equal(tensor, state[SHARED]):
            raise ExportError(f"{key} differs from the shared embedding: untied embeddings are not supported")
        mapping.dropped[key] = "tied to the shared embedding"


def _embedding_rows(state: dict, tokenizer, mapping: KeyMapping, default: int) -> int:
    """Rows of the (tied) embedding, grown when it does not cover `<image>`. New rows are the mean of
    the existing ones: deterministic, and a token the original could never emit gets the average
    logit rather than an extreme one. Padded to a multiple of 64 as transformers' conversion does."""
    import torch

    if SHARED not in state:
        return default  # the key check reports it missing
    weight = state[SHARED]
    rows, needed = weight.shape[0], len(tokenizer)
    if rows >= needed:
        return rows
    if rows < needed - 1:
        raise ExportError(f"the embedding has {rows} rows but the tokenizer with the Florence-2 tokens has "
                          f"{needed - 1}: tokenizer and weights do not belong together")
    target = -(-needed // EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE
    extra = weight.mean(dim=0, keepdim=True).expand(target - rows, -1)
    state[SHARED] = torch.cat([weight, extra]).contiguous()
    mapping.created[f"{SHARED}[{rows}:{target}]"] = f"{IMAGE_TOKEN} and padding rows, mean of the others"
    return target


def _check_keys(state: dict, model, folder: Path) -> None:
    """Refuse, with one line listing a few, keys the native model lacks or needs, and shape mismatches."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    needed = set(expected) - TIED - {"lm_head.weight"}
    missing, unexpected = sorted(needed - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{key} {tuple(state[key].shape)} (expected {expected[key]})"
              for key in sorted(set(state) & set(expected)) if tuple(state[key].shape) != expected[key]]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ExportError(f"{folder} (original layout) does not match its config: {'; '.join(problems)}")
