"""Generated inputs for every graph of a contract, and deterministic sample images.

The parity gate of `python -m export` and the fidelity report (`python -m quantize.report`) feed
these same inputs, so both judge a graph on the cases that once caught a bug:

- dynamic graphs: batch 2, two prompt lengths, a padded row; decoder steps with an empty cache, then a
  24-row one on the same session (OpenVINO 2026.4's CPU plugin computed wrong logits for every cache
  of 15+ rows once it had run an empty one), and 3 beams over a 5-row cache;
- static graphs: a short and a full prompt; decoder steps at the first slot, a middle one and the
  last, with random values in the slots the step must not see (a mask that leaks fails).

Torch-free (numpy and Pillow), so both the exporter and the quantize tools use them.
"""

from __future__ import annotations

import numpy as np

from .contract import (ATTENTION_MASK, ENCODER_ATTENTION_MASK, INPUT_IDS, INPUTS_EMBEDS, PIXEL_VALUES, POSITION,
                       Contract)

PROMPT_LENGTHS = (3, 9)
DECODER_CASES = ((1, 0), (1, 24), (3, 5))  # (beams, cached tokens), in this order on one session


def mask(batch: int, lengths: list[int], total: int) -> np.ndarray:
    return (np.arange(total)[None, :] < np.array(lengths)[:batch, None]).astype(np.int64)


def graph_cases(contract: Contract, name: str, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The generated inputs of graph `name`: see the module docstring. The last case has every
    dynamic axis above 1 (the exporters trace on it)."""
    if contract.static is not None:
        return _static_cases(contract, name, seed)
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    dims = contract.dims
    full = [contract.encoder_sequence(n) for n in PROMPT_LENGTHS]
    if name == "vision_encoder":
        return [{PIXEL_VALUES: normal(2, 3, *dims.image_size)}]
    if name == "embed_tokens":
        return [{INPUT_IDS: rng.integers(0, dims.vocab_size, (2, n), dtype=np.int64)} for n in PROMPT_LENGTHS]
    if name == "encoder":
        return [{INPUTS_EMBEDS: normal(2, total, dims.d_model), ATTENTION_MASK: mask(2, [total, full[0]], total)}
                for total in full]
    if name == "decoder":
        cases = []
        for beams, past in DECODER_CASES:
            rows, total = 2 * beams, full[1]
            case = {INPUT_IDS: rng.integers(0, dims.vocab_size, (rows, 1), dtype=np.int64),
                    ENCODER_ATTENTION_MASK: mask(2, [total, full[0]], total)}
            case.update({n: normal(rows, dims.decoder_heads, past, dims.head_dim) for n in contract.past_names})
            case.update({n: normal(2, dims.decoder_heads, total, dims.head_dim) for n in contract.cross_names})
            cases.append(case)
        return cases
    raise ValueError(f"no generated inputs for graph {name!r}")


def _static_cases(contract: Contract, name: str, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    dims, layout = contract.dims, contract.static
    bucket, total = layout.prompt_bucket, contract.encoder_sequence(layout.prompt_bucket)
    lengths = sorted({dims.image_tokens + min(3, bucket), total})
    if name == "vision_encoder":
        return [{PIXEL_VALUES: normal(1, 3, *dims.image_size)}]
    if name == "embed_tokens":
        return [{INPUT_IDS: rng.integers(0, dims.vocab_size, (1, bucket), dtype=np.int64)}]
    if name == "encoder":
        return [{INPUTS_EMBEDS: normal(1, total, dims.d_model), ATTENTION_MASK: mask(1, [n], total)} for n in lengths]
    if name == "decoder":
        cases = []
        for position in sorted({0, min(5, layout.max_decode - 1), layout.max_decode - 1}):
            rows, heads, hd = layout.beams, dims.decoder_heads, dims.head_dim
            case = {INPUT_IDS: rng.integers(0, dims.vocab_size, (rows, 1), dtype=np.int64),
                    POSITION: np.array([position], dtype=np.int64),
                    ENCODER_ATTENTION_MASK: mask(1, [lengths[0]], total)}
            case.update({n: normal(rows, heads, layout.max_decode, hd) for n in contract.past_names})
            case.update({n: normal(1, heads, total, hd) for n in contract.cross_names})
            cases.append(case)
        return cases
    raise ValueError(f"no generated inputs for static graph {name!r}")


def sample_image(seed: int, size: tuple[int, int] = (640, 480)):
    """A deterministic test picture (noise plus filled rectangles), for tests, the benchmark and the
    fidelity report: different enough per seed to steer a random model differently."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


# The built-in calibration set of `--int8 --calibration builtin` starts here, apart from the seeds the
# fidelity report and the benchmark use (0, 1, 2...): the report then judges calibrated int8 on
# images it was not calibrated on.
CALIBRATION_SEED = 1000


def sample_images(count: int = 3, first_seed: int = 0) -> list:
    """`count` sample images in a few sizes (landscape, portrait, square, large), seeds from `first_seed`."""
    sizes = [(640, 480), (300, 500), (768, 768), (1024, 683)] * count
    return [sample_image(seed, size) for seed, size in zip(range(first_seed, first_seed + count), sizes)]
