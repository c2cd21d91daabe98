"""One loaded model under concurrent clients: 16 at once get exactly their own answers, a bounded load
test (examples/serve_load.py, with and without batching) has no error, and SIGTERM answers every
request already received before the service exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, python-multipart) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from conftest import make_image  # noqa: E402
from serve_tools import QUICK, encoded, free_port, serving, wait_for  # noqa: E402

from runtime import Florence2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["<OD>", "<CAPTION>", "<OCR>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>", "<OCR_WITH_REGION>",
         "<DENSE_REGION_CAPTION>", "<REFERRING_EXPRESSION_SEGMENTATION>"]
TEXT = {"<CAPTION_TO_PHRASE_GROUNDING>": "a red car", "<REFERRING_EXPRESSION_SEGMENTATION>": "the dog"}
SIZES = [(320, 240), (240, 320), (200, 200), (400, 300)]


@pytest.fixture(scope="module")
def model(onnx_artifact):
    return Florence2.load(onnx_artifact)


def test_16_clients_at_once_get_exactly_their_own_answers(model):
    jobs = [(make_image(100 + i, SIZES[i % 4]), TASKS[i % len(TASKS)]) for i in range(16)]
    options = {name: int(value) for name, value in QUICK.items()}
    expected = [model(image, task, TEXT.get(task), **options)[task] for image, task in jobs]
    gate = threading.Event()  # held until all 16 have arrived: they are served from one full queue
    with serving(model, gate=gate) as (url, app):
        worker, answers, start = app.state.worker, [None] * 16, threading.Barrier(16)

        def client(i):
            image, task = jobs[i]
            fields = {**QUICK, "task": task, **({"text": TEXT[task]} if task in TEXT else {})}
            start.wait()
            answers[i] = httpx.post(f"{url}/v1/predict", files={"image": (f"{i}.png", encoded(image))},
                                    data=fields, timeout=120)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        wait_for(lambda: sum(worker.load().values()) == 16, what="16 requests to arrive")
        gate.set()
        for thread in threads:
            thread.join(120)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    for i, (answer, (image, task)) in enumerate(zip(answers, jobs)):
        record = answer.json()
        assert (record["image"], record["task"], record["image_size"]) == (f"{i}.png", task, list(image.size))
        assert record["result"] == expected[i], f"client {i} ({task})"
    assert sorted(worker.batches, reverse=True)[0] > 1 and sum(worker.batches) == 16  # batched, each once


def test_bounded_load_with_and_without_batching(onnx_artifact):
    """examples/serve_load.py: 16 requests from 8 clients, 2 of them bad on purpose, twice."""
    result = subprocess.run([sys.executable, "examples/serve_load.py", "--model", str(onnx_artifact), "--requests",
                             "16", "--concurrency", "8", "--max-new-tokens", "8", "--bad-every", "8", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = json.loads(result.stdout)
    for key in ("batching", "no_batching"):
        figures = runs[key]
        print(f"\n{key}: {figures['requests']} requests, concurrency {figures['concurrency']}, "
              f"p50 {figures['p50']:.3f} s, p95 {figures['p95']:.3f} s, errors {figures['errors']}, "
              f"{figures['throughput']:.2f} req/s")
        assert figures["requests"] == 16 and figures["bad_requests"] == 2 and figures["errors"] == 0
        assert 0 < figures["p50"] <= figures["p95"]
    assert runs["no_batching"]["batches"] == [1] * 14
    assert max(runs["batching"]["batches"]) > 1
    print(f"batching gain: {runs['gain']:.2f}x")


def test_sigterm_answers_the_received_requests_then_exits(onnx_artifact):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = subprocess.Popen([sys.executable, "-m", "runtime.serve", "--model", str(onnx_artifact), "--port",
                                str(port), "--log-level", "warning"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _healthy(url) or service.poll() is not None, timeout=120, what="the service to start")
        assert service.poll() is None, service.stderr.read()
        answers = {}

        def ask(i):
            answers[i] = httpx.post(f"{url}/v1/predict", files={"image": (f"{i}.png", encoded(make_image(i, (200, 150))))},
                                    data={**QUICK, "task": "<CAPTION>"}, timeout=120)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: _load(url) >= 4, what="4 requests in the service")
        service.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(120)
        assert [answers[i].status_code for i in range(4)] == [200] * 4
        # uvicorn re-raises the signal once it has drained: killed by SIGTERM, as the shell's 143 says.
        assert service.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in service.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _load(url: str) -> int:
    try:
        health = httpx.get(f"{url}/healthz", timeout=2).json()
    except httpx.HTTPError:
        return 0
    return health.get("queued", 0) + health.get("running", 0)
