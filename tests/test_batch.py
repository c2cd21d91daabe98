"""The batch job (`python -m runtime ... --output`), run as a user runs it: a folder tree with images, a
3-page PDF, a 2-frame TIFF and bad files; the results file, resume, --restart, the torn-line repair,
the lock, kill -9 and Ctrl-C midway; plus its pieces (scan, names, prefetch, runner) in process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_image
from PIL import Image

from runtime.batch.items import OUTPUT_MARKER, scan
from runtime.batch.outputs import plan_names
from runtime.batch.pipeline import Loaded, Prefetch, Runner
from runtime.batch.progress import Progress, Summary
from runtime.batch.results import HEADER_KEY

pypdf = pytest.importorskip("pypdf")
pdfium = pytest.importorskip("pypdfium2")

ROOT = Path(__file__).resolve().parents[1]
TOKENS = "4"  # the random tiny model decodes to its limit: keep every run short
TASK = "<OCR>"


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _default_sigint() -> None:
    # A suite started in the background (nohup, `cmd &` in a script) hands its children SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the child gets Ctrl-C as a terminal does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def read_jsonl(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines[0], lines[1:]


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    bodies = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def make_pdf(path: Path, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    """A PDF of one image page per size, at 100 dpi (PIL writes it)."""
    pages = [make_image(seed + i, size) for i, size in enumerate(sizes)]
    pages[0].save(path, save_all=True, append_images=pages[1:], resolution=100)


GOOD = ["a.jpg", "a.png", "doc.pdf#page=1", "doc.pdf#page=2", "doc.pdf#page=3", "stack.tif#frame=1",
        "stack.tif#frame=2", "sub/b.png"]
BAD = ["corrupt.pdf", "empty.png", "locked.pdf", "trunc.png", "zero.pdf"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Images (a.jpg and a.png: one stem), a subfolder, a 3-page PDF, a 2-frame TIFF, bad files."""
    root = tmp_path_factory.mktemp("tree")
    (root / "sub").mkdir()
    make_image(13, (320, 240)).save(root / "a.png")
    make_image(11, (200, 300)).save(root / "a.jpg")
    make_image(3, (240, 160)).save(root / "sub" / "b.png")
    make_pdf(root / "doc.pdf", [(200, 150), (150, 200), (100, 100)])
    frames = [make_image(5, (120, 90)), make_image(6, (90, 120))]
    frames[0].save(root / "stack.tif", save_all=True, append_images=frames[1:])
    png = (root / "a.png").read_bytes()
    (root / "trunc.png").write_bytes(png[: len(png) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(300))
    writer = pypdf.PdfWriter(clone_from=root / "doc.pdf")
    writer.encrypt("secret", algorithm="RC4-128")
    writer.write(root / "locked.pdf")
    (root / "zero.pdf").write_bytes(zero_page_pdf())
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(png)
    return root


def job_args(artifact, tree, out: Path, *extra):
    return ["--model", artifact, tree, "-r", "--task", TASK, "--max-new-tokens", TOKENS, "--output",
            out / "results.jsonl", "--text-dir", out / "text", "--annotate", out / "drawn", *extra]


@pytest.fixture(scope="module")
def tree_run(onnx_artifact, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_cli(*job_args(onnx_artifact, tree, out, "--batch-size", "2"))
    return proc, out


def names(records, tree) -> list[str]:
    return sorted(Path(r["image"]).relative_to(tree).as_posix() for r in records)


def test_results_file_has_a_header_and_one_record_per_item(tree_run, tree, onnx_artifact):
    proc, out = tree_run
    assert proc.returncode == 1, proc.stderr  # some items failed
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    header, records = read_jsonl(out / "results.jsonl")
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    assert header[HEADER_KEY] == 1 and header["tool"].startswith("florence2-edge")
    assert header["artifact"] == manifest["checksum"] and header["task"] == TASK and header["text"] is None
    assert header["options"]["max_new_tokens"] == int(TOKENS) and "num_beams" in header["options"]
    assert header["inputs"] == {"dpi": 200.0, "exif_transpose": False}
    answered = [r for r in records if "result" in r]
    failed = [r for r in records if "error" in r]
    assert names(answered, tree) == GOOD and names(failed, tree) == BAD
    for record in answered:
        assert set(record) == {"image", "task", "result", "seconds", "image_size", "source", "files"}
        assert record["source"] == {"size": os.stat(record["image"].split("#")[0]).st_size,
                                    "mtime_ns": os.stat(record["image"].split("#")[0]).st_mtime_ns}
    errors = {Path(r["image"]).name: r["error"] for r in failed}
    assert "encrypted" in errors["locked.pdf"] and "without pages" in errors["zero.pdf"]
    assert "truncated" in errors["trunc.png"] and "empty" in errors["empty.png"]
    sizes = {Path(r["image"]).name: r["image_size"] for r in answered}
    # PDF pages at 200 dpi: a 200x150 px page at 100 dpi is 2 x 1.5 inches
    assert sizes["doc.pdf#page=1"] == [400, 300] and sizes["doc.pdf#page=3"] == [200, 200]
    assert sizes["stack.tif#frame=1"] == [120, 90] and sizes["stack.tif#frame=2"] == [90, 120]
    lines = proc.stderr.splitlines()
    assert sum(line.startswith("runtime: error: ") for line in lines) == len(BAD)
    assert lines[-1].startswith(f"runtime: 13 items: 8 answered, 0 skipped (already done), 5 failed in ")
    assert lines[-1].endswith("items/min); files not taken: 1 hidden, 1 neither image nor PDF")


def test_side_files_are_named_by_item_and_listed_in_records(tree_run, tree):
    _, out = tree_run
    _, records = read_jsonl(out / "results.jsonl")
    written = set()
    for record in (r for r in records if "result" in r):
        relative = Path(record["image"].replace("#page=", ".page-").replace("#frame=", ".frame-")).relative_to(tree)
        text, drawn = out / "text" / f"{relative}.txt", out / "drawn" / f"{relative}.png"
        assert record["files"] == [str(text), str(drawn)]
        assert text.read_text(encoding="utf-8") == record["result"] + "\n"
        with Image.open(drawn) as image:
            assert image.format == "PNG" and list(image.size) == record["image_size"]
        written |= {text, drawn}
    on_disk = {p for p in (out / "text").rglob("*") if p.is_file()} | {p for p in (out / "drawn").rglob("*") if p.is_file()}
    assert on_disk - written == {out / "text" / OUTPUT_MARKER, out / "drawn" / OUTPUT_MARKER}
    assert (out / "drawn" / "a.jpg.png").exists() and (out / "drawn" / "a.png.png").exists()


def test_answers_equal_the_python_api(tree_run, tree, onnx_artifact):
    """The prefetch's early RGB + resize gives the pixels model(path) sees; PDF pages as pdfium renders them."""
    from runtime import Florence2

    _, out = tree_run
    _, records = read_jsonl(out / "results.jsonl")
    model = Florence2.load(onnx_artifact)
    by_name = {Path(r["image"]).name: r for r in records if "result" in r}
    for name in ("a.png", "a.jpg"):
        assert by_name[name]["result"] == model(str(tree / name), TASK, max_new_tokens=int(TOKENS))[TASK]
    page = pdfium.PdfDocument(tree / "doc.pdf")[1].render(scale=200 / 72).to_pil()
    assert by_name["doc.pdf#page=2"]["result"] == model(page, TASK, max_new_tokens=int(TOKENS))[TASK]


def copy_run(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(out, target)
    return target


def test_resume_skips_answered_and_retries_failed_and_changed(tree_run, tree, onnx_artifact, tmp_path):
    _, out = tree_run
    run = copy_run(out, tmp_path)
    header, records = read_jsonl(run / "results.jsonl")
    # Pretend a.png changed since: its answer is stale and must run again.
    stale = next(r for r in records if r["image"].endswith("a.png"))
    stale["source"]["mtime_ns"] -= 1
    (run / "results.jsonl").write_text("\n".join(json.dumps(x) for x in [header, *records]) + "\n")
    proc = run_cli(*job_args(onnx_artifact, tree, run))
    assert proc.returncode == 1, proc.stderr
    assert "13 items: 1 answered, 7 skipped (already done), 5 failed" in proc.stderr.splitlines()[-1]
    again_header, again = read_jsonl(run / "results.jsonl")
    assert again_header == header
    assert names(again, tree) == sorted(GOOD + BAD)  # each item once: old error lines were dropped
    unchanged = {r["image"]: r for r in records if "result" in r and r is not stale}
    assert all(r == unchanged[r["image"]] for r in again if r["image"] in unchanged)
    assert {r["image"] for r in again[-6:]} == {stale["image"]} | {str(tree / name) for name in BAD}


def test_other_job_on_the_same_file_is_refused(tree_run, tree, onnx_artifact, tmp_path):
    _, out = tree_run
    run = copy_run(out, tmp_path)
    before = (run / "results.jsonl").read_bytes()
    args = job_args(onnx_artifact, tree, run)
    args[args.index("--max-new-tokens") + 1] = "5"
    proc = run_cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runtime: error: ")
    assert "options.max_new_tokens 4 there, 5 here" in lines[0] and "--restart" in lines[0]
    assert (run / "results.jsonl").read_bytes() == before


def test_an_output_that_is_not_a_results_file_is_never_touched(onnx_artifact, tree, tmp_path):
    theirs = tmp_path / "notes.jsonl"
    theirs.write_text('{"image": "x.png", "task": "<OCR>", "result": "hi"}\n')
    for extra in ([], ["--restart"]):
        proc = run_cli("--model", onnx_artifact, tree / "a.png", "--task", TASK, "--output", theirs, *extra)
        assert proc.returncode == 2 and "not a results file of this tool" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    assert theirs.read_text() == '{"image": "x.png", "task": "<OCR>", "result": "hi"}\n'
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    proc = run_cli("--model", onnx_artifact, tree / "a.png", "--task", TASK, "--text-dir", folder)
    assert proc.returncode == 2 and "holds files this tool did not write" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_restart_and_torn_line(onnx_artifact, tree, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--model", onnx_artifact, tree / "a.png", tree / "sub", "--task", TASK, "--max-new-tokens", TOKENS,
            "--output", out, "-q"]
    assert run_cli(*args).returncode == 0
    header, records = read_jsonl(out)
    assert len(records) == 2
    # A kill in the middle of a line: the second record is cut.
    data = out.read_bytes()
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    out.write_bytes(data[: last + 20])
    proc = run_cli(*args[:-1])
    assert proc.returncode == 0, proc.stderr
    assert "torn last line" in proc.stderr and "1 answered, 1 skipped" in proc.stderr
    _, repaired = read_jsonl(out)
    assert [r["image"] for r in repaired] == [r["image"] for r in records]
    assert [r["result"] for r in repaired] == [r["result"] for r in records]
    assert run_cli(*args, "--restart").returncode == 0
    restarted_header, restarted = read_jsonl(out)
    assert restarted_header["options"] == header["options"] and len(restarted) == 2


def test_a_second_run_on_one_output_is_refused(onnx_artifact, tree, tmp_path):
    from runtime.batch.lock import FileLock

    out = tmp_path / "r.jsonl"
    lock = FileLock(tmp_path / "r.jsonl.lock")
    lock.acquire(out)
    try:
        proc = run_cli("--model", onnx_artifact, tree / "a.png", "--task", TASK, "--output", out)
    finally:
        lock.release()
    assert proc.returncode == 2 and f"another run is writing {out}" in proc.stderr and str(os.getpid()) in proc.stderr
    assert not out.exists() and not (tmp_path / "r.jsonl.lock").exists()


def many_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        make_image(100 + index, (160, 120)).save(folder / f"img-{index:02d}.png")
    make_pdf(folder / "pages.pdf", [(120, 160)] * 4, seed=50)
    return folder


def wait_for_records(path: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count + 1:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} records after {timeout} s")


def test_interrupted_twice_then_resumed_loses_and_repeats_nothing(onnx_artifact, tmp_path):
    inputs = many_images(tmp_path / "in", 12)  # 16 items: 12 images, 4 PDF pages
    out = tmp_path / "out"
    args = ["--model", onnx_artifact, inputs, "--task", TASK, "--max-new-tokens", TOKENS, "--output",
            out / "results.jsonl", "--text-dir", out / "text", "--annotate", out / "drawn", "--progress"]
    first = start_cli(*args)
    wait_for_records(out / "results.jsonl", 3, first)
    first.send_signal(signal.SIGINT)  # Ctrl-C: the batch in flight is dropped, the summary printed
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr.splitlines()[-1] and "Traceback" not in stderr
    assert not (out / "results.jsonl.lock").exists()
    _, after_first = read_jsonl(out / "results.jsonl")
    second = start_cli(*args)
    wait_for_records(out / "results.jsonl", len(after_first) + 3, second)
    second.kill()  # kill -9: no cleanup at all
    second.communicate(timeout=60)
    assert (out / "results.jsonl.lock").exists()  # left behind, but not held
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.splitlines()[-1]
    _, records = read_jsonl(out / "results.jsonl")
    expected = sorted([str(inputs / f"img-{i:02d}.png") for i in range(12)] +
                      [f"{inputs / 'pages.pdf'}#page={n}" for n in range(1, 5)])
    assert sorted(r["image"] for r in records) == expected  # nothing lost, nothing twice
    assert all("result" in r for r in records)
    assert summary.startswith("runtime: 16 items: ") and " 0 failed" in summary
    skipped = int(summary.split(" answered, ")[1].split(" skipped")[0])
    assert skipped >= len(after_first) + 3
    for record in records:
        text, drawn = map(Path, record["files"])
        assert text.read_text(encoding="utf-8") == record["result"] + "\n"
        with Image.open(drawn) as image:
            image.load()
            assert list(image.size) == record["image_size"]
    leftovers = [p for p in out.rglob(".*") if p.name != OUTPUT_MARKER]
    assert leftovers == []  # temporary files of the killed run were removed


def test_pixel_limit_fails_the_item_alone(onnx_artifact, tree, tmp_path):
    proc = run_cli("--model", onnx_artifact, tree / "a.png", tree / "sub" / "b.png", tree / "doc.pdf",
                   "--task", TASK, "--max-new-tokens", TOKENS, "--max-pixels", "50000", "-q")
    assert proc.returncode == 1
    records = {Path(r["image"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert "over the limit of 50000" in records["a.png"]["error"]  # 320 x 240
    assert "400x300 pixels at 200 dpi" in records["doc.pdf#page=1"]["error"]
    assert "result" in records["b.png"] and "result" in records["doc.pdf#page=3"]  # 240x160, 200x200


def test_exif_orientation_only_when_asked(tmp_path):
    from runtime.batch.items import Item
    from runtime.batch.sources import SourceOptions, load_item

    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    make_image(1, (160, 90)).save(path, exif=exif)
    item = Item(str(path), str(path), "photo.jpg")
    assert load_item(item, SourceOptions()).size == (160, 90)
    assert load_item(item, SourceOptions(exif_transpose=True)).size == (90, 160)
    assert SourceOptions(exif_transpose=True).pixel_options() == {"dpi": 200.0, "exif_transpose": True}


# --- pieces, in process ------------------------------------------------------------------------------

def test_scan_names_counts_and_skips_our_outputs(tree, tmp_path):
    found = scan([str(tree)], recursive=False)
    assert "sub/b.png" not in [Path(i.name).relative_to(tree).as_posix() for i in found.items]
    deep = scan([str(tree), str(tree / "a.png")], recursive=True)  # a.png twice: once
    assert sorted(Path(i.name).relative_to(tree).as_posix() for i in deep.items) == sorted(GOOD + BAD)
    assert (deep.hidden, deep.other) == (1, 1)
    ours = tmp_path / "copy"
    shutil.copytree(tree, ours)
    (ours / "sub" / OUTPUT_MARKER).write_text("")
    assert not any("sub" in i.name for i in scan([str(ours)], recursive=True).items)


def test_output_names_stay_apart(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        make_image(0, (32, 32)).save(tmp_path / folder / "a.jpg")
    items = scan([str(tmp_path / "x"), str(tmp_path / "y")]).items
    assert sorted(plan_names(items).values()) == ["a-2.jpg", "a.jpg"]


def test_prefetch_is_bounded_and_ordered():
    from runtime.batch.items import Item

    active, most, lock = [0], [0], threading.Lock()

    def load(item):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return Loaded(item, error="x")

    items = [Item(str(i), str(i), str(i)) for i in range(40)]
    started = []
    prefetch = Prefetch(items, lambda item: (started.append(item.name), load(item))[1], depth=3, workers=2)
    seen = []
    for loaded in prefetch:
        seen.append(loaded.item.name)
        assert len(started) <= len(seen) + 3  # never more than `depth` loaded ahead of the consumer
    prefetch.close()
    assert seen == [str(i) for i in range(40)] and most[0] <= 2


def test_a_failing_item_does_not_fail_its_batch(onnx_artifact, tree):
    from runtime import Florence2
    from runtime.batch.items import Item

    model = Florence2.load(onnx_artifact)
    good = Image.open(tree / "a.png")
    good.load()
    # A path that vanished after prefetch: the model's own image loading fails for this item only.
    batch = [Loaded(Item("good", "good", "good"), good, good.size),
             Loaded(Item("gone", "gone", "gone"), str(tree / "gone.png"), (10, 10))]
    outcomes = Runner(model, TASK, generation={"max_new_tokens": int(TOKENS)})(batch)
    assert outcomes[0].error is None
    assert outcomes[0].answer == model(good, TASK, max_new_tokens=int(TOKENS))[TASK]
    assert "does not exist" in outcomes[1].error


def test_status_line_and_summary(tmp_path):
    import io

    stream = io.StringIO()
    progress = Progress(4, enabled=True, stream=stream, interval=0)
    progress.update()
    progress.update(failed=True)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("runtime: 2/4 items (50%), 1 failed, ") and "items/min, ETA " in lines[-1]
    quiet = io.StringIO()
    Progress(4, enabled=False, stream=quiet).update()
    assert quiet.getvalue() == ""
    line = Summary(items=10, answered=6, skipped=2, failed=1, seconds=30.0, interrupted=True).line()
    assert line == ("runtime: 10 items: 6 answered, 2 skipped (already done), 1 failed in 30.0 s (14.0 items/min); "
                    "interrupted, 1 not run: run the same command again to resume")


def test_runtime_import_stays_light():
    script = "import sys, runtime; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
             "{'pypdf', 'pypdfium2', 'tqdm', 'ray'} or m.startswith('runtime.batch')))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
