"""A second implementation of the Florence-2 loop, from the artifact alone: what a native app ports.

    python examples/mobile_port.py ARTIFACT [--graphs ort|onnx] [--fields FILE]

It reads manifest.json (as plain JSON), the .ort graphs (onnxruntime) and token_bytes.json, never
imports florence2-edge, and reproduces the artifact's conformance vectors: the resize, the pixels,
the prompt ids, the first decoder step, and greedy and beam search ids, text and answers. Each line
is a check; the last line counts them; exit 0 when all passed. `--fields FILE` writes the manifest
fields it read, as JSON. docs/mobile.md gives the same loop in pseudo-code; tests/test_mobile_port.py
runs this file with florence2-edge made unimportable.

Every fact it uses is read from the manifest. The statements of `mobile.dataflow` it implements are
copied below (DATAFLOW): if the artifact states something else, the port refuses to run.
Needs onnxruntime, numpy and Pillow (to decode PNGs; the bicubic resize is ported below, bit-exact).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

NEG = np.float32(-1.0e9)  # transformers' "never pick this" offset in beam search
DATAFLOW = {  # the statements of manifest["mobile"]["dataflow"] this file implements, word for word
    "encoder.inputs_embeds": "concat(vision_encoder.image_features, embed_tokens.inputs_embeds) on axis 1",
    "encoder.attention_mask": "1 for each image token and each prompt token, 0 for padding (int64)",
    "decoder.encoder_attention_mask": "encoder.attention_mask",
    "decoder.cross.{i}.key|value": "encoder.cross.{i}.key|value, the same at every step, one row per image (not per beam)",
    "decoder.logits": "next-token logits per row; ids >= dims.tokenizer_size are never chosen",
    "text": "the token bytes of the ids concatenated (special tokens kept), decoded as UTF-8 (bad bytes: U+FFFD)",
}


class Fields(dict):
    """A JSON object that records the dotted path of every key read from it (and from its objects)."""

    def __init__(self, data: dict, path: str = "", seen: set | None = None):
        super().__init__(data)
        self.path, self.seen = path, set() if seen is None else seen

    def __getitem__(self, key):
        value = super().__getitem__(key)
        where = f"{self.path}.{key}" if self.path else str(key)
        self.seen.add(where)
        return Fields(value, where, self.seen) if isinstance(value, dict) else value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def read(self) -> list[str]:
        """The paths read, without those only passed through on the way to a deeper one."""
        return sorted(p for p in self.seen if not any(q.startswith(p + ".") for q in self.seen))


# -- preprocessing ---------------------------------------------------------------------------------

def resize(image: Image.Image, m: Fields) -> np.ndarray:
    """uint8 [H, W, 3]: RGB (transparency onto white), resized with the manifest's filter: bicubic
    (3) by the port of Pillow's algorithm below, which a native app can copy; others by Pillow."""
    pre, (height, width) = m["preprocessing"], m["dims"]["image_size"]
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if not pre["do_resize"]:
        return np.asarray(image)
    if pre["resample"] == 3:
        return bicubic(np.asarray(image), width, height)
    return np.asarray(image.resize((width, height), resample=Image.Resampling(pre["resample"])))


FIXED = 22  # Pillow's PRECISION_BITS (32 - 8 - 2): coefficients in fixed point


def cubic(x: np.ndarray) -> np.ndarray:
    a, x = -0.5, np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def coefficients(size: int, out: int) -> list[tuple[int, np.ndarray]]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel
    and int weights. Downscaling widens the filter by the scale (antialiasing)."""
    scale = size / out
    support = 2.0 * max(scale, 1.0)
    rows = []
    for i in range(out):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), size) - first
        w = cubic((np.arange(count) + first - center + 0.5) / max(scale, 1.0))
        total = 0.0
        for v in w:  # summed in order, as the C loop does
            total += v
        w = w / total if total != 0.0 else w
        rows.append((first, np.trunc(w * (1 << FIXED) + np.where(w < 0, -0.5, 0.5)).astype(np.int64)))
    return rows


def resample(pixels: np.ndarray, rows: list, axis: int) -> np.ndarray:
    src = np.moveaxis(pixels, axis, 0).astype(np.int64)
    out = np.empty((len(rows),) + src.shape[1:], dtype=np.uint8)
    for i, (first, w) in enumerate(rows):
        acc = (1 << (FIXED - 1)) + np.tensordot(w, src[first:first + len(w)], axes=(0, 0))
        out[i] = np.clip(acc >> FIXED, 0, 255)  # rounded, clipped to uint8 between the passes
    return np.moveaxis(out, 0, axis)


def bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's Image.resize(BICUBIC) of uint8 RGB, bit for bit: horizontal pass first (only over the
    rows the vertical pass reads), then vertical."""
    h, w = rgb.shape[:2]
    columns, rows = coefficients(w, width), coefficients(h, height)
    if width != w:
        top, bottom = rows[0][0], rows[-1][0] + len(rows[-1][1])
        rgb = resample(rgb[top:bottom], columns, axis=1)
        rows = [(first - top, wts) for first, wts in rows]
    return resample(rgb, rows, axis=0) if height != h else rgb


def normalize(rgb: np.ndarray, m: Fields) -> np.ndarray:
    """float32 [1, 3, H, W] as the dataflow statement for pixel_values says."""
    pre = m["preprocessing"]
    x = (rgb.astype(np.float64) * pre["rescale_factor"]).astype(np.float32)
    x = (x - np.array(pre["image_mean"], dtype=np.float32)) / np.array(pre["image_std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


# -- the graphs ------------------------------------------------------------------------------------

class Graphs:
    def __init__(self, folder: Path, m: Fields, kind: str):
        self.m = m
        graphs = m["graphs"]
        files = {n: graphs[n]["variants"]["ort"]["file"] if kind == "ort" else graphs[n]["file"]
                 for n in ("vision_encoder", "embed_tokens", "encoder", "decoder")}
        self.sessions = {n: ort.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"])
                         for n, f in files.items()}
        self.io = {n: (list(graphs[n]["inputs"]), list(graphs[n]["outputs"])) for n in files}

    def run(self, name: str, feeds: dict, outputs: list[str] | None = None) -> dict:
        names = outputs or self.io[name][1]
        return dict(zip(names, self.sessions[name].run(names, feeds)))

    def encode(self, pixels: np.ndarray, prompt_ids: list[int]) -> tuple[dict, np.ndarray]:
        """Cross-attention K/V and the encoder mask for one image and its prompt."""
        m, static = self.m, self.m.get("static")
        (vision_in,), (vision_out,) = self.io["vision_encoder"]
        features = self.run("vision_encoder", {vision_in: pixels})[vision_out]
        width = static["prompt_bucket"] if static else len(prompt_ids)
        ids = np.full((1, width), m["tokens"]["pad"], dtype=np.int64)
        ids[0, :len(prompt_ids)] = prompt_ids
        (embed_in,), (embed_out,) = self.io["embed_tokens"]
        embeds = self.run("embed_tokens", {embed_in: ids})[embed_out]
        mask = np.zeros((1, features.shape[1] + width), dtype=np.int64)
        mask[0, :features.shape[1] + len(prompt_ids)] = 1
        feeds = {"inputs_embeds": np.concatenate([features, embeds], axis=1), "attention_mask": mask}
        cross_names = [n for n in self.io["encoder"][1] if n.startswith("cross.")]
        return self.run("encoder", feeds, cross_names), mask


class DynamicStep:
    """The decoder with a growing cache: present K/V of one step are the past of the next."""

    def __init__(self, graphs: Graphs, cross: dict, mask: np.ndarray, rows: int):
        dims, inputs = graphs.m["dims"], graphs.io["decoder"][0]
        self.graphs, self.past_names = graphs, [n for n in inputs if n.startswith("past.")]
        empty = np.zeros((rows, dims["decoder_heads"], 0, dims["head_dim"]), dtype=np.float32)
        self.feeds = {"encoder_attention_mask": mask, **cross, **{n: empty for n in self.past_names}}

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        self.feeds["input_ids"] = tokens.reshape(-1, 1).astype(np.int64)
        out = self.graphs.run("decoder", self.feeds, ["logits", *("present." + n[5:] for n in self.past_names)])
        self.feeds.update({n: out["present." + n[5:]] for n in self.past_names})
        return out["logits"][:, -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        self.feeds.update({n: self.feeds[n][beam_idx] for n in self.past_names})


class StaticStep:
    """The static decoder: fixed K/V buffers, one slot written per step at `position`."""

    def __init__(self, graphs: Graphs, cross: dict, mask: np.ndarray, rows: int):
        m, inputs = graphs.m, graphs.io["decoder"][0]
        static, dims = m["static"], m["dims"]
        self.graphs, self.past_names, self.rows, self.position = graphs, [n for n in inputs if n.startswith("past.")], rows, 0
        self.beams = static["beams"]
        shape = (self.beams, dims["decoder_heads"], static["max_decode"], dims["head_dim"])
        self.feeds = {"encoder_attention_mask": mask, **cross, **{n: np.zeros(shape, np.float32) for n in self.past_names}}

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.zeros((self.beams, 1), dtype=np.int64)
        ids[:len(tokens), 0] = tokens
        self.feeds.update(input_ids=ids, position=np.array([self.position], dtype=np.int64))
        out = self.graphs.run("decoder", self.feeds, ["logits", *("present." + n[5:] for n in self.past_names)])
        for n in self.past_names:
            self.feeds[n][:, :, self.position] = out["present." + n[5:]][:, :, 0]
        self.position += 1
        return out["logits"][:self.rows, -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        for n in self.past_names:
            self.feeds[n][:len(beam_idx), :, :self.position] = self.feeds[n][beam_idx, :, :self.position]


# -- decoding (transformers' generate() semantics) ---------------------------------------------------

def process(ids: np.ndarray, scores: np.ndarray, o: dict, rules: dict) -> np.ndarray:
    """The logits processors, in transformers' order: no-repeat n-grams, min new tokens, forced
    BOS, forced EOS, ids past the tokenizer. ids [rows, cur_len], scores [rows, V] (written in place)."""
    cur, n = ids.shape[1], o["no_repeat_ngram_size"]
    if n and cur >= n:
        for row, seq in enumerate(ids.tolist()):
            prefix = seq[cur - n + 1:]
            banned = [seq[s + n - 1] for s in range(cur - n + 1) if seq[s:s + n - 1] == prefix]
            scores[row, banned] = -np.inf
    if cur < 1 + o["min_new_tokens"]:
        scores[:, rules["eos"]] = -np.inf
    for token, at in ((o["forced_bos_token_id"], 1), (o["forced_eos_token_id"], o["max_new_tokens"])):
        if token is not None and cur == at:
            scores[:] = -np.inf
            scores[:, token] = 0.0
    scores[:, rules["tokenizer_size"]:] = -np.inf
    return scores


def greedy(step, o: dict, rules: dict) -> list[int]:
    ids = np.array([[rules["start"]]], dtype=np.int64)
    while ids.shape[1] < 1 + o["max_new_tokens"]:
        scores = process(ids, np.array(step(ids[:, -1]), dtype=np.float32), o, rules)
        token = int(np.argmax(scores[0]))
        ids = np.concatenate([ids, [[token]]], axis=1)
        if token == rules["eos"]:
            break
    return ids[0].tolist()


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))


def top(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-values, kind="stable")[:k]  # largest first, ties in index order


def beam_search(step, o: dict, rules: dict) -> list[int]:
    """transformers' beam search for one image: K running beams and K finished slots."""
    k, max_len, penalty, early = o["num_beams"], 1 + o["max_new_tokens"], o["length_penalty"], o["early_stopping"]
    running = np.full((k, max_len), rules["start"], dtype=np.int64)
    running_scores = np.array([0.0] + [NEG] * (k - 1), dtype=np.float32)
    done_seqs, done_scores = running.copy(), np.full(k, NEG, dtype=np.float32)
    done_lens, done_flags, improvable, cur = np.zeros(k, np.int64), np.zeros(k, bool), True, 1
    while True:
        scores = process(running[:, :cur], log_softmax(np.array(step(running[:, cur - 1]), np.float32)), o, rules)
        totals = (scores + running_scores[:, None]).reshape(-1)
        best = top(totals, 2 * k)
        values, (source, tokens) = totals[best], np.divmod(best, scores.shape[1])
        candidates = running[source].copy()
        candidates[:, cur] = tokens
        stops = (tokens == rules["eos"]) | (cur + 1 >= max_len)
        live = values + stops.astype(np.float32) * NEG
        keep = top(live, k)
        running, running_scores, beam_idx = candidates[keep], live[keep], source[keep]
        finished = stops.copy()
        finished[k:] = False
        final = values / np.float32((cur + 1 - 1) ** penalty)
        final = final + np.float32(done_flags.all() and early is True) * NEG
        final = final + np.float32(not improvable) * NEG
        final = final + (~finished).astype(np.float32) * NEG
        merged = top(np.concatenate([done_scores, final]), k)
        done_seqs = np.concatenate([done_seqs, candidates])[merged]
        done_scores = np.concatenate([done_scores, final])[merged]
        done_lens = np.concatenate([done_lens, np.full(2 * k, cur)])[merged]
        done_flags = np.concatenate([done_flags, finished])[merged]
        cur += 1
        length = max_len - 1 if early == "never" and penalty > 0 else cur - 1
        worst = np.where(done_flags, done_scores.min(), NEG)
        improvable = improvable and bool((running_scores[0] / np.float32(length ** penalty) > worst).any())
        if not improvable or (done_flags.all() and early is True) or stops.all():
            return done_seqs[0, :1 + done_lens[0]].tolist()
        step.reorder(beam_idx)


# -- text and answers --------------------------------------------------------------------------------

def text_of(ids: list[int], table: list[bytes]) -> str:
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def answer_of(text: str, task: str, size: tuple[int, int], parse_type: str):
    """post_process_generation for the parse types the vectors use (pure_text, description_with_bboxes)."""
    if parse_type == "pure_text":
        return {task: text.replace("<s>", "").replace("</s>", "").strip()}
    if parse_type != "description_with_bboxes":
        return None
    clean = text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")
    scale = np.array([size[0] / 1000, size[1] / 1000], dtype=np.float32)
    boxes, labels = [], []
    for phrase in re.findall(r"([^<]+(?:<loc_\d+>){4,})", clean):
        label = re.search(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)", phrase)
        if label is None:
            continue
        for box in re.findall(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>", phrase):
            centres = np.array(box, dtype=np.int64).astype(np.float32).reshape(2, 2) + np.float32(0.5)
            boxes.append((centres * scale).astype(np.int32).ravel().tolist())
            labels.append(label.group().strip().encode("ascii", "ignore").decode("ascii"))
    return {task: {"bboxes": boxes, "labels": labels}}


# -- the vectors -------------------------------------------------------------------------------------

def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def check_sample(s: dict, vectors: dict, m: Fields, graphs: Graphs, table: list[bytes]) -> list[tuple[str, bool]]:
    image = Image.open(io.BytesIO(base64.b64decode(s["image_png"])))
    rgb = resize(image, m)
    ours = Image.open(io.BytesIO(base64.b64decode(s["resized"]["png"])))
    pixels = normalize(np.asarray(ours.convert("RGB")), m)  # feed our pixels: the rest is tested exactly
    task = m["tasks"][s["task"]]
    results = [("resize", sha(rgb) == s["resized"]["sha256"]), ("pixel_values", sha(pixels) == s["pixel_values"]["sha256"]),
               ("prompt_ids", list(task["prompt_ids"]) == s["prompt_ids"])]
    eos = m["generation"].get("eos_token_id")
    eos = m["tokens"]["eos"] if eos is None else eos[0] if isinstance(eos, list) else eos
    rules = {"start": m["tokens"]["decoder_start"], "tokenizer_size": m["dims"]["tokenizer_size"], "eos": eos}
    rows = {"greedy": 1, "beam": vectors["options"].get("beam", {}).get("num_beams", 1)}
    step_type = StaticStep if m.get("static") else DynamicStep
    cross, mask = graphs.encode(pixels, task["prompt_ids"])
    logits = step_type(graphs, cross, mask, 1)(np.array([rules["start"]]))[0]
    tol = vectors["tolerances"]
    want = s["first_step"]
    results.append(("first_step", all(abs(float(logits[i]) - v) <= tol["logits_atol"] + tol["logits_rtol"] * abs(v)
                                      for i, v in zip(want["ids"], want["logits"]))))
    for mode, search in (("greedy", greedy), ("beam", beam_search)):
        if mode not in vectors["options"]:
            continue
        ids = search(step_type(graphs, cross, mask, rows[mode]), vectors["options"][mode], rules)
        text = text_of(ids, table)
        answer = answer_of(text, s["task"], tuple(s["image_size"]), task["parse_type"])
        results += [(f"{mode}.ids", ids == s[mode]["ids"]), (f"{mode}.text", text == s[mode]["text"])]
        if answer is not None:  # a parse type this port does not implement is left out, not passed
            results.append((f"{mode}.answer", answer == s[mode]["answer"]))
    return results


def check_dataflow(m: Fields) -> None:
    stated = m["mobile"]["dataflow"]
    for key, statement in DATAFLOW.items():
        if stated[key] != statement:
            sys.exit(f"mobile_port: the manifest states {key}: {stated[key]!r}; this port implements {statement!r}")
    for key in ("vision_encoder.pixel_values", "embed_tokens.input_ids", "decoder.input_ids", "generation", "answer",
                "decoder.past.{i}.key|value", *(["decoder.position"] if m.get("static") else [])):
        stated[key]  # read: the behaviour above follows these statements (see docs/mobile.md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--graphs", choices=("ort", "onnx"), default="ort")
    parser.add_argument("--fields", type=Path, help="write the manifest fields read here, as JSON")
    args = parser.parse_args()
    m = Fields(json.loads((args.artifact / "manifest.json").read_text(encoding="utf-8")))
    check_dataflow(m)
    vectors = json.loads((args.artifact / m["conformance"]).read_text(encoding="utf-8"))
    table = [base64.b64decode(t) for t in json.loads((args.artifact / m["mobile"]["token_bytes"]).read_text())["tokens"]]
    graphs = Graphs(args.artifact, m, args.graphs)
    passed = failed = 0
    for sample in vectors["samples"]:
        for what, ok in check_sample(sample, vectors, m, graphs, table):
            print(f"{'ok  ' if ok else 'FAIL'} {sample['name']:<12} {what}")
            passed, failed = passed + ok, failed + (not ok)
    if args.fields:
        args.fields.write_text(json.dumps(m.read(), indent=1) + "\n")
    print(f"mobile_port: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
