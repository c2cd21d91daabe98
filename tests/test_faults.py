"""The fault suite: the bad inputs a hostile-but-fair user tries, over the runtime API and `python -m
runtime`, table by table. Every case asserts the error class (API) or the exit code (CLI), a one-line
message saying what is wrong, no traceback, and that the other images of the run were answered.

    IMAGES      files and in-memory images, good-but-unusual ones included (CMYK, 16-bit, animated...)
    ARTIFACTS   tampered artifacts, plus every malformed manifest of test_contract.MALFORMED
    CLI_CASES   bad command lines;  API_CASES  bad calls (options, tasks, texts, devices)

A row is a case: to cover a new one, add a row. The CLI is run as it is today (`python -m runtime
--model ART inputs... --task T`, JSON lines on stdout, exit 0/1/2): the image table in one real
subprocess, the other tables through `runtime.cli.main` in this process (the same code, a few
seconds less per case; an exception escaping it is what a traceback would be).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from artifact_tools import copy_artifact, edit_manifest, poison_onnx, rehash
from PIL import Image
from test_contract import MALFORMED

from runtime import Florence2
from runtime.errors import ArtifactError, BackendError, Florence2Error, ImageError, TaskError
from runtime.images import ImageWarning, load_image
from runtime.probes import sample_image

REPO = Path(__file__).resolve().parents[1]
TOKENS = "4"
GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"


@pytest.fixture(scope="module")
def artifact(variant_checkpoint, exported) -> Path:
    return exported(variant_checkpoint("px128"), "onnx")


@pytest.fixture(scope="module")
def model(artifact) -> Florence2:
    return Florence2.load(artifact)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> list[Path]:
    """Two good images: the ones every CLI run of this suite also gets, to see they are answered."""
    folder = tmp_path_factory.mktemp("good")
    sample_image(1, (160, 120)).save(folder / "first.png")
    sample_image(2, (90, 150)).save(folder / "last.jpg")
    return [folder / "first.png", folder / "last.jpg"]


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


# ------------------------------------------------------------------------------------------------ images

def _save(name: str, image: Image.Image, **options) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        image.save(folder / name, **options)
        return folder / name
    return make


def _bytes(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data())
        return folder / name
    return make


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image, and no pixels: what a decompression bomb
    looks like to the part of PIL that opens it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _frames(name: str, count: int, **options) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        frames = [sample_image(30 + i, (80, 60)) for i in range(count)]
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], **options)
        return folder / name
    return make


def _sixteen_bit(top: int) -> Image.Image:
    return Image.fromarray((np.linspace(0, top, 64 * 48).reshape(48, 64)).astype(np.uint16))


def _link(name: str, target: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).symlink_to(target)
        return folder / name
    return make


def _loop(folder: Path) -> Path:
    (folder / "loop-a.png").symlink_to("loop-b.png")
    (folder / "loop-b.png").symlink_to("loop-a.png")
    return folder / "loop-a.png"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.png")
    return folder / "pipe.png"


def _memory(value) -> Callable[[Path], object]:
    return lambda folder: value


@dataclass(frozen=True)
class ImageCase:
    name: str
    make: Callable[[Path], object]  # folder -> a file in it (or an in-memory image: API only)
    error: str | None = None  # in the one-line ImageError; None: answered
    warning: str | None = None  # in the ImageWarning it is answered with
    size: tuple[int, int] | None = None  # the image_size of the answer
    cli: bool = True  # also an input of the CLI run (a path the CLI takes as a file)
    cli_frames: int = 0  # the CLI runs each frame of a multi-page file as its own item, "path#frame=N"


_PHOTO = sample_image(5, (120, 80))
_PNG = _encoded(_PHOTO, "PNG")
_JPEG = _encoded(_PHOTO, "JPEG")

IMAGES = [
    ImageCase("empty file", _bytes("empty.png", lambda: b""), error="is empty (0 bytes)"),
    ImageCase("truncated PNG", _bytes("cut.png", lambda: _PNG[: len(_PNG) // 2]), error="truncated"),
    ImageCase("truncated JPEG", _bytes("cut.jpg", lambda: _JPEG[: len(_JPEG) // 2]), error="truncated"),
    ImageCase("random bytes", _bytes("noise.jpg", lambda: np.random.default_rng(0).bytes(5000)),
              error="is not an image PIL can read"),
    ImageCase("text as image", _bytes("notes.png", lambda: b"meeting notes, not a picture\n" * 20),
              error="is not an image PIL can read"),
    ImageCase("SVG", _bytes("drawing.svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                                                    b'height="10"><rect width="10" height="10"/></svg>'),
              error="is not an image PIL can read"),
    ImageCase("bomb-sized", _bytes("bomb.png", lambda: _png_claiming(50_000, 50_000)), error="decompression bomb"),
    ImageCase("FIFO", _fifo, error="is not a regular file"),
    ImageCase("CMYK JPEG", _save("cmyk.jpg", _PHOTO.convert("CMYK")), size=(120, 80)),
    ImageCase("RGBA PNG", _save("rgba.png", _PHOTO.convert("RGBA")), size=(120, 80)),
    ImageCase("palette PNG", _save("palette.png", _PHOTO.convert("P")), size=(120, 80)),
    ImageCase("palette PNG with transparency", _save("palette-t.png", _PHOTO.convert("P"), transparency=0), size=(120, 80)),
    ImageCase("grayscale+alpha PNG", _save("la.png", _PHOTO.convert("LA")), size=(120, 80)),
    ImageCase("1-bit PNG", _save("bits.png", _PHOTO.convert("1")), size=(120, 80)),
    ImageCase("PNG named .jpg", _bytes("really-png.jpg", lambda: _PNG), size=(120, 80)),
    ImageCase("16-bit PNG", _save("deep.png", _sixteen_bit(65535)), warning="with values up to 65535", size=(64, 48)),
    ImageCase("16-bit PNG in 8-bit range", _save("deep-low.png", _sixteen_bit(255)), size=(64, 48)),
    ImageCase("animated GIF", _frames("anim.gif", 3, duration=50, loop=0), warning="has 3 frames; only the first",
              size=(80, 60)),
    ImageCase("multi-page TIFF", _frames("pages.tif", 2), warning="has 2 frames; only the first", size=(80, 60),
              cli_frames=2),
    # The CLI takes these as missing paths or folders before any image is read (tested in CLI_CASES).
    ImageCase("missing file", lambda folder: folder / "absent.png", error="does not exist", cli=False),
    ImageCase("broken symlink", _link("dangling.png", "gone.png"), error="is a broken symbolic link", cli=False),
    ImageCase("symlink loop", _loop, error="is a symbolic link loop", cli=False),
    ImageCase("directory", lambda folder: folder, error="is a directory", cli=False),
    ImageCase("0x0 PIL image", _memory(Image.new("RGB", (0, 0))), error="at least 1x1 pixels", cli=False),
    ImageCase("16-bit PIL image", _memory(_sixteen_bit(4000)), warning="with values up to 4000", size=(64, 48),
              cli=False),
    ImageCase("float array", _memory(np.zeros((8, 8, 3), np.float32)), error="expected an HxWx3 uint8 array", cli=False),
    ImageCase("two-channel array", _memory(np.zeros((8, 8, 2), np.uint8)), error="got shape (8, 8, 2)", cli=False),
    ImageCase("bytes object", _memory(_PNG), error="got bytes", cli=False),
]


@pytest.mark.parametrize("case", IMAGES, ids=[c.name for c in IMAGES])
def test_api_image(model, good, case, tmp_path):
    source = case.make(tmp_path)
    if case.error:
        with pytest.raises(ImageError) as err:
            model.run([good[0], source], "<OD>", max_new_tokens=int(TOKENS))
        assert case.error in str(err.value) and one_line(str(err.value))
        assert model.run(good[1], "<OD>", max_new_tokens=int(TOKENS))  # the model answers the next call
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        results = model.run([good[0], source], "<OD>", max_new_tokens=int(TOKENS))
    said = [str(w.message) for w in seen if issubclass(w.category, ImageWarning)]
    assert (said and all(one_line(m) for m in said) and any(case.warning in m for m in said)) if case.warning else not said
    assert results[1].image_size == case.size and len(results) == 2


def test_16_bit_image_is_read_as_transformers_reads_it(tmp_path):
    """The warning only says what happens: the pixels are transformers' (PIL's RGB conversion, which
    clips), not converted in some other way."""
    path = _save("deep.png", _sixteen_bit(65535))(tmp_path)
    with pytest.warns(ImageWarning):
        image = load_image(path)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def cli_images(artifact, good, tmp_path_factory):
    """One real `python -m runtime` run over every file case, between the two good images."""
    folder = tmp_path_factory.mktemp("bad-images")
    cases = {case.name: case.make(folder) for case in IMAGES if case.cli}
    inputs = [good[0], *cases.values(), good[1]]
    proc = subprocess.run([sys.executable, "-m", "runtime", "--model", str(artifact), *map(str, inputs), "--task",
                           "<OD>", "--max-new-tokens", TOKENS], cwd=REPO, capture_output=True, text=True, timeout=600)
    records = {r["image"]: r for r in map(json.loads, proc.stdout.splitlines())}
    return proc, records, {name: str(path) for name, path in cases.items()}


def test_cli_images_run_answers_every_good_image(cli_images, good):
    proc, records, cases = cli_images
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    frames = sum(case.cli_frames - 1 for case in IMAGES if case.cli and case.cli_frames)
    assert len(records) == len(cases) + 2 + frames  # one line per item, none lost
    for path in good:
        assert "result" in records[str(path)], records[str(path)]
    *lines, summary = proc.stderr.splitlines()
    for line in lines:
        assert line.startswith(("runtime: error: ", "runtime: warning: ")), line
    assert SUMMARY.match(summary) and f"{len(records)} items:" in summary, summary


@pytest.mark.parametrize("case", [c for c in IMAGES if c.cli], ids=[c.name for c in IMAGES if c.cli])
def test_cli_image(cli_images, case):
    proc, records, cases = cli_images
    if case.cli_frames:  # each frame answered as its own item, so no "only the first frame" warning
        for frame in range(1, case.cli_frames + 1):
            assert records[f"{cases[case.name]}#frame={frame}"]["image_size"] == list(case.size)
        return
    record = records[cases[case.name]]
    if case.error:
        assert case.error in record["error"] and one_line(record["error"]), record
        assert any(case.error in line and line.startswith("runtime: error: ") for line in proc.stderr.splitlines())
    else:
        assert record["image_size"] == list(case.size), record
    if case.warning:
        assert any(case.warning in line and line.startswith("runtime: warning: ") for line in proc.stderr.splitlines())


# --------------------------------------------------------------------------------------------- artifacts

def _remove(name: str):
    return lambda folder: (folder / name).unlink()


def _write(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(name: str):
    def change(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return change


def _swap(a: str, b: str):
    def change(folder: Path) -> None:
        (folder / a).rename(folder / "swap")
        (folder / b).rename(folder / a)
        (folder / "swap").rename(folder / b)
    return change


def _then_rehash(change):
    def both(folder: Path) -> None:
        change(folder)
        rehash(folder)
    return both


def _raw_edit(folder: Path) -> None:
    """An edit by hand, checksum left as it was."""
    data = json.loads((folder / "manifest.json").read_text())
    data["preprocessing"]["image_mean"] = [0.5, 0.5, 0.5]
    (folder / "manifest.json").write_text(json.dumps(data))


def _drop_a_token(folder: Path) -> None:
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = data["added_tokens"][:-1]
    (folder / "tokenizer.json").write_text(json.dumps(data))


@dataclass(frozen=True)
class ArtifactCase:
    name: str
    change: Callable[[Path], object]  # applied to a copy of the artifact
    error: str  # in the one-line message
    when: str = "load"  # "load": Florence2.load fails (CLI exit 2); "run": every call fails (CLI exit 1)
    model: Callable[[Path, Path], Path] = lambda folder, checkpoint: folder  # (copy, checkpoint) -> --model


ARTIFACTS = [
    ArtifactCase("manifest missing", _remove("manifest.json"), "is not a florence2-edge artifact: expected manifest.json"),
    ArtifactCase("manifest not JSON", _write("manifest.json", b'{"format_version": 2,'), "cannot read"),
    ArtifactCase("manifest empty", _write("manifest.json", b""), "cannot read"),
    ArtifactCase("manifest edited by hand", _raw_edit, "was changed after export"),
    ArtifactCase("manifest from a newer exporter", lambda f: edit_manifest(f, lambda d: {**d, "format_version": 99}),
                 "format_version 99, this runtime reads 2: upgrade florence2-edge"),
    ArtifactCase("graph missing", _remove("decoder.onnx"), "is missing decoder.onnx"),
    ArtifactCase("graph truncated", _truncate("decoder.onnx"), "does not match its sha256"),
    ArtifactCase("graphs swapped", _swap("encoder.onnx", "decoder.onnx"), "does not match its sha256"),
    ArtifactCase("tokenizer replaced", _write("tokenizer.json", b"{}"), "does not match its sha256"),
    ArtifactCase("graph damaged, hashes re-recorded", _then_rehash(_write("decoder.onnx", b"\x08\x07garbage" * 64)),
                 "decoder.onnx: onnxruntime cannot load this graph"),
    ArtifactCase("graph of another kind, hashes re-recorded",
                 _then_rehash(lambda f: shutil.copyfile(f / "vision_encoder.onnx", f / "decoder.onnx")),
                 "the graph file does not belong to this artifact"),
    ArtifactCase("tokenizer damaged, hashes re-recorded", _then_rehash(_write("tokenizer.json", b"{not json")),
                 "cannot read tokenizer"),
    ArtifactCase("tokenizer of another size, hashes re-recorded", _then_rehash(_drop_a_token),
                 "tokenizer and graphs do not belong together"),
    ArtifactCase("NaN weights in the decoder", lambda f: poison_onnx(f, "decoder"),
                 "the decoder graph's logits output is not finite", when="run"),
    ArtifactCase("NaN weights in the vision encoder", lambda f: poison_onnx(f, "vision_encoder"),
                 "the vision_encoder graph's image_features output is not finite", when="run"),
    ArtifactCase("--model is a file", lambda f: None, "is a file; expected an artifact folder",
                 model=lambda f, c: f / "manifest.json"),
    ArtifactCase("--model missing", lambda f: None, "artifact folder not found", model=lambda f, c: f / "absent"),
    ArtifactCase("--model is a checkpoint", lambda f: None, "is not a florence2-edge artifact",
                 model=lambda f, c: c),
] + [
    # Field by field (the checksum recomputed, as if the exporter had written it): what speaks is the field.
    ArtifactCase(f"malformed: {message}", lambda f, change=change: edit_manifest(f, change), message)
    for change, message in MALFORMED
]


@pytest.fixture()
def tampered(artifact, variant_checkpoint, tmp_path):
    def make(case: ArtifactCase) -> Path:
        folder = copy_artifact(artifact, tmp_path / "artifact")
        case.change(folder)
        return case.model(folder, variant_checkpoint("px128"))
    return make


@pytest.mark.parametrize("case", ARTIFACTS, ids=[c.name for c in ARTIFACTS])
def test_api_artifact(tampered, good, case):
    path = tampered(case)
    if case.when == "load":
        with pytest.raises((ArtifactError, BackendError)) as err:
            Florence2.load(path)
        assert case.error in str(err.value) and one_line(str(err.value)), str(err.value)
        return
    model = Florence2.load(path)
    for beams in (1, 3):  # greedy and beam search alike
        with pytest.raises(BackendError) as err:
            model.run(good, "<OD>", num_beams=beams, max_new_tokens=int(TOKENS))
        assert case.error in str(err.value) and one_line(str(err.value))


# The last stderr line of every run that got as far as running items.
SUMMARY = re.compile(r"runtime: \d+ items?: \d+ answered, \d+ skipped \(already done\), \d+ failed in ")


def run_cli(capfd, *args) -> tuple[int, list[dict], list[str]]:
    """`python -m runtime ARGS` in this process: exit code, JSON records, stderr lines. An exception
    escaping `main` (a traceback, in a shell) fails the test right there."""
    from runtime.cli import main

    capfd.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    out, err = capfd.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err.splitlines()


def assert_cli_refused(code, records, stderr, fragment: str | None) -> None:
    assert code == 2 and records == [], (code, records, stderr)
    errors = [line for line in stderr if not line.startswith("runtime: warning: ")]
    assert len(errors) == 1 and errors[0].startswith("runtime: error: ") and one_line(errors[0]), stderr
    assert fragment is None or fragment in errors[0], errors[0]


def assert_cli_failed_each(code, records, stderr, inputs: list[Path], fragment: str) -> None:
    assert code == 1 and [r["image"] for r in records] == [str(p) for p in inputs], (code, records)
    assert all(fragment in r["error"] and one_line(r["error"]) for r in records), records
    *errors, summary = stderr
    assert len(errors) == len(inputs), stderr
    assert all(line.startswith("runtime: error: ") and fragment in line for line in errors), stderr
    assert SUMMARY.match(summary) and f"0 answered, 0 skipped (already done), {len(inputs)} failed" in summary, summary


@pytest.mark.parametrize("case", ARTIFACTS, ids=[c.name for c in ARTIFACTS])
def test_cli_artifact(tampered, good, case, capfd):
    code, records, stderr = run_cli(capfd, "--model", tampered(case), *good, "--task", "<OD>", "--max-new-tokens", TOKENS)
    if case.when == "load":
        assert_cli_refused(code, records, stderr, case.error)
    else:
        assert_cli_failed_each(code, records, stderr, good, case.error)


# ----------------------------------------------------------------------------------------- command lines

@dataclass(frozen=True)
class CliCase:
    name: str
    args: Callable[[Path, list[Path], Path], list]  # (artifact, good images, scratch folder) -> argv
    code: int  # 2: refused before any image runs; 1: every image got an error record
    error: str | None  # in the one-line message (None: only its form is checked)


def _od(*extra):
    return lambda art, good, tmp: ["--model", art, *good, "--task", "<OD>", *extra]


def _annotate_file(art, good, tmp):
    (tmp / "taken").write_text("a file")
    return ["--model", art, *good, "--task", "<OD>", "--annotate", tmp / "taken"]


def _input(make):
    return lambda art, good, tmp: ["--model", art, good[0], make(tmp), "--task", "<OD>"]


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


CLI_CASES = [
    CliCase("--num-beams 0", _od("--num-beams", "0"), 2, "expected an integer >= 1, got 0"),
    CliCase("--num-beams three", _od("--num-beams", "three"), 2, "expected an integer >= 1, got 'three'"),
    CliCase("--max-new-tokens 0", _od("--max-new-tokens", "0"), 2, "expected an integer >= 1, got 0"),
    CliCase("--max-new-tokens past the positions", _od("--max-new-tokens", "1025"), 1,
            "max_new_tokens=1025 is more than this model's 1024 decoder positions"),
    CliCase("--text past the positions",
            lambda art, good, tmp: ["--model", art, *good, "--task", GROUNDING, "--text", " ".join(["car"] * 1100)], 1,
            "this model takes at most 1007"),
    CliCase("unknown task", lambda art, good, tmp: ["--model", art, *good, "--task", "<ODD>"], 2, "did you mean '<OD>'"),
    CliCase("--text for a task without input", _od("--text", "a car"), 2, "<OD> takes no text input"),
    CliCase("task input missing", lambda art, good, tmp: ["--model", art, *good, "--task", GROUNDING], 2,
            "needs a text input"),
    CliCase("no --task", lambda art, good, tmp: ["--model", art, *good], 2, "--task"),
    CliCase("--device tpu", _od("--device", "tpu"), 2, "unknown device 'tpu'"),
    CliCase("--device npu, dynamic artifact", _od("--device", "npu"), 2, "needs a static-shape artifact"),
    CliCase("--batch-size 0", _od("--batch-size", "0"), 2, "expected an integer >= 1, got 0"),
    CliCase("mistyped option", _od("--beams", "3"), 2, "unknown option --beams"),
    CliCase("--annotate is a file", _annotate_file, 2, "--annotate expects a folder"),
    CliCase("input missing", _input(lambda tmp: tmp / "absent.png"), 2, "no such file or folder"),
    CliCase("only a folder without images", lambda art, good, tmp: ["--model", art, _empty_folder(tmp), "--task", "<OD>"],
            2, "no image or PDF files in"),
    CliCase("input is a symlink loop", _input(_loop), 2, "is a symbolic link loop"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_cli_command_line(artifact, good, case, tmp_path, capfd):
    code, records, stderr = run_cli(capfd, *case.args(artifact, good, tmp_path))
    if case.code == 2:
        assert_cli_refused(code, records, stderr, case.error)
    else:
        assert_cli_failed_each(code, records, stderr, good, case.error)


# -------------------------------------------------------------------------------------------- API calls

@dataclass(frozen=True)
class ApiCase:
    name: str
    call: Callable[[Florence2, Image.Image, Path], object]  # (model, image, artifact folder)
    error: str
    kind: type = Florence2Error


def _generate(**options):
    return lambda model, image, art: model.generate(image, "<OD>", **options)


API_CASES = [
    ApiCase("unknown option", _generate(temperature=0.5), "unknown generation option(s) temperature"),
    ApiCase("artifact-owned option", _generate(eos_token_id=5), "eos_token_id is fixed by the artifact"),
    ApiCase("num_beams 0", _generate(num_beams=0), "num_beams must be an int >= 1, got 0"),
    ApiCase("num_beams as text", _generate(num_beams="3"), "num_beams must be an int >= 1, got '3'"),
    ApiCase("num_beams 2.5", _generate(num_beams=2.5), "got 2.5"),
    ApiCase("num_beams True", _generate(num_beams=True), "got True"),
    ApiCase("max_new_tokens 0", _generate(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    ApiCase("max_new_tokens past the positions", _generate(max_new_tokens=1025), "1024 decoder positions"),
    ApiCase("max_new_tokens 10**12", _generate(max_new_tokens=10**12), "1024 decoder positions"),
    ApiCase("min_new_tokens above max", _generate(min_new_tokens=30, max_new_tokens=5), "min_new_tokens must be <="),
    ApiCase("early_stopping sometimes", _generate(early_stopping="sometimes"), "True, False or 'never'"),
    ApiCase("length_penalty text", _generate(length_penalty="x"), "length_penalty must be a finite float"),
    ApiCase("length_penalty NaN", _generate(length_penalty=float("nan")), "length_penalty must be a finite float"),
    ApiCase("no_repeat_ngram_size -1", _generate(no_repeat_ngram_size=-1), "must be an int >= 0"),
    ApiCase("forced_bos past the vocabulary", _generate(forced_bos_token_id=10**9), "must be < vocab_size"),
    ApiCase("unknown task", lambda m, i, a: m(i, "<ODD>"), "did you mean '<OD>'", TaskError),
    ApiCase("task None", lambda m, i, a: m(i, None), "expected a task token", TaskError),
    ApiCase("text for a task without input", lambda m, i, a: m(i, "<OD>", "x"), "takes no text input", TaskError),
    ApiCase("text missing", lambda m, i, a: m(i, GROUNDING), "needs a text input", TaskError),
    ApiCase("text not a string", lambda m, i, a: m(i, GROUNDING, 5), "to be a string", TaskError),
    ApiCase("text past the positions", lambda m, i, a: m(i, GROUNDING, " ".join(["car"] * 1100)),
            "this model takes at most 1007"),
    ApiCase("two tasks for one image", lambda m, i, a: m([i], ["<OD>", "<OD>"]), "got 2 task values for 1 images",
            TaskError),
    ApiCase("no image", lambda m, i, a: m([], "<OD>"), "expected at least one image", TaskError),
    ApiCase("device tpu", lambda m, i, a: Florence2.load(a, device="tpu"), "unknown device 'tpu'", BackendError),
    ApiCase("device npu, dynamic artifact", lambda m, i, a: Florence2.load(a, device="npu"),
            "needs a static-shape artifact", ArtifactError),
    ApiCase("inference_precision, onnx artifact", lambda m, i, a: Florence2.load(a, inference_precision="f16"),
            "inference_precision applies to openvino artifacts", ArtifactError),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.name for c in API_CASES])
def test_api_call(model, artifact, good, case):
    image = sample_image(7, (100, 100))
    with pytest.raises(case.kind) as err:
        case.call(model, image, artifact)
    assert case.error in str(err.value) and one_line(str(err.value)), str(err.value)
    assert model.run(good, "<OD>", max_new_tokens=int(TOKENS))  # and the next call is answered


def test_suite_counts():
    """The figures the closing note gives (printed with -s), and a guard that no table went empty."""
    counts = {"images (API)": len(IMAGES), "images (CLI)": sum(c.cli for c in IMAGES),
              "artifacts (API and CLI)": len(ARTIFACTS), "command lines": len(CLI_CASES), "API calls": len(API_CASES)}
    print("fault suite:", ", ".join(f"{k} {v}" for k, v in counts.items()), "| total", sum(counts.values())
          + len(ARTIFACTS))
    assert all(counts.values()) and len(MALFORMED) >= 14
