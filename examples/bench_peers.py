"""transformers as the benchmark's peers: the same Florence-2 checkpoint run by transformers in the
ways a user would try before reaching for an export, each in its own subprocess (examples/benchmark.py).

    PEERS: "default"       the attention implementation transformers picks (sdpa), fp32
           "eager"         attn_implementation="eager", fp32
           "int8-dynamic"  torch.ao.quantization.quantize_dynamic of every nn.Linear (int8 weights,
                           activations quantized per call), fp32 elsewhere
           "bf16-autocast" torch.autocast("cpu", dtype=torch.bfloat16) around preprocessing-free generate

`peer_worker(spec)` times one of them like the artifacts are timed: one warm-up, then medians of vision,
encoder, ms per decoded token and end to end. `unavailable(peer)` says why a peer cannot run here.
"""

from __future__ import annotations

import contextlib
import time

PEERS = ("default", "eager", "int8-dynamic", "bf16-autocast")


def unavailable(peer: str) -> str | None:
    """None when `peer` can run in this torch, else the reason it cannot (the row is skipped with it)."""
    if peer not in PEERS:
        return f"unknown transformers peer {peer!r}; expected one of {', '.join(PEERS)}"
    import torch

    if peer == "int8-dynamic":
        quantize = getattr(getattr(torch, "ao", None), "quantization", None)
        if quantize is None or not hasattr(quantize, "quantize_dynamic"):
            return "this torch has no torch.ao.quantization.quantize_dynamic"
        if "x86" not in torch.backends.quantized.supported_engines and "fbgemm" not in torch.backends.quantized.supported_engines:
            return f"no x86/fbgemm quantized engine in this torch ({', '.join(torch.backends.quantized.supported_engines)})"
    if peer == "bf16-autocast" and not torch.amp.autocast_mode.is_autocast_available("cpu"):
        return "this torch has no CPU autocast"
    return None


def load_peer(peer: str, checkpoint: str, attention: str | None = None):
    """(model, context manager factory for generate, decoder weight bytes per step) for `peer`."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    attention = "eager" if peer == "eager" else attention  # None: what transformers picks (sdpa)
    kwargs = {"attn_implementation": attention} if attention else {}
    model = Florence2ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, **kwargs).eval()
    weight_bytes = decoder_weight_bytes(model, int8_linear=peer == "int8-dynamic")
    if peer == "int8-dynamic":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (moved to torchao)
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if peer == "bf16-autocast":
        # Weights stay fp32 in memory: autocast casts them per op, so a step still reads fp32 bytes.
        return model, lambda: torch.autocast("cpu", dtype=torch.bfloat16), weight_bytes
    return model, contextlib.nullcontext, weight_bytes


def decoder_weight_bytes(model, int8_linear: bool = False) -> int:
    """Bytes a decode step reads for weights: the BART decoder and the (tied) LM head, at fp32, or with
    every nn.Linear weight at one byte (`int8_linear`, what quantize_dynamic stores). Call before quantizing."""
    import torch

    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    params = {id(p): p for p in model.model.language_model.decoder.parameters()}
    params[id(model.lm_head.weight)] = model.lm_head.weight
    return sum(p.numel() * (1 if int8_linear and key in linear else p.element_size()) for key, p in params.items())


def peer_worker(spec: dict, timed_runs, bench_image, peak_rss_mb) -> dict:
    """One transformers peer on the benchmark's image and prompt (helpers passed by benchmark.py)."""
    import torch
    from transformers import AutoProcessor

    checkpoint = spec["checkpoint"]
    model, context, weight_bytes = load_peer(spec.get("peer", "default"), checkpoint, spec.get("attention"))
    processor = AutoProcessor.from_pretrained(checkpoint)
    # Embedding rows past the tokenizer are padding: the runtime never picks them; neither does the reference.
    padded = list(range(len(processor.tokenizer), model.config.text_config.vocab_size)) or None
    marks: dict[str, float] = {}

    def mark(name):
        return lambda *_: marks.__setitem__(name, time.perf_counter())

    inner = model.model
    inner.vision_tower.register_forward_pre_hook(mark("vision_start"))
    inner.multi_modal_projector.register_forward_hook(mark("vision_end"))
    inner.language_model.encoder.register_forward_pre_hook(mark("encoder_start"))
    inner.language_model.encoder.register_forward_hook(mark("encoder_end"))
    image, prompt, tokens = bench_image(), spec["prompt"], spec["tokens"]

    def once():
        began = time.perf_counter()
        inputs = processor(text=prompt, images=image, return_tensors="pt")
        with torch.no_grad(), context():
            ids = model.generate(**inputs, num_beams=spec["beams"], max_new_tokens=tokens, min_new_tokens=tokens,
                                 suppress_tokens=padded)[0].tolist()
        end = time.perf_counter()
        return {"vision": marks["vision_end"] - marks["vision_start"],
                "encoder": marks["encoder_end"] - marks["encoder_start"],
                "decode": (end - marks["encoder_end"]) / (len(ids) - 1), "e2e": end - began}, ids

    medians, ids = timed_runs(once, spec["repeats"])
    return {"vision_ms": medians["vision"], "encoder_ms": medians["encoder"], "decode_ms_per_token": medians["decode"],
            "e2e_ms": medians["e2e"], "ids": ids, "attention": model.config._attn_implementation,
            "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "decoder_weight_bytes": weight_bytes}
