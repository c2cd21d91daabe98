"""The service as a client meets it: every endpoint, every error status, the token, the upload limit
and the queue limit, over real HTTP on a loopback port (uvicorn in a thread of the test process).
Answers are compared with `Florence2.load(artifact)(image, task)` for the same image."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, python-multipart) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from conftest import make_image  # noqa: E402
from serve_tools import QUICK, encoded, serving, wait_for  # noqa: E402

from runtime import Florence2  # noqa: E402
from runtime.serve.access import exposure_warning, is_loopback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = ["image", "task", "result", "seconds", "image_size"]


@pytest.fixture(scope="module")
def model(onnx_artifact):
    return Florence2.load(onnx_artifact)


@pytest.fixture(scope="module")
def service(model):
    with serving(model, max_upload_bytes=256 * 1024) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def png():
    return encoded(make_image(2, (320, 240)))


def post(url: str, data: bytes | None, name: str = "photo.png", headers=None, **fields):
    files = {"image": (name, data, "application/octet-stream")} if data is not None else None
    return httpx.post(f"{url}/v1/predict", files=files, data={**QUICK, **fields}, headers=headers, timeout=60)


def one_json_line(response) -> dict:
    text = response.text
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return json.loads(text)


def test_page_tasks_info_and_health(service, model, onnx_artifact):
    url, _ = service
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    tasks = {t["task"]: t for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]}
    assert set(tasks) == set(model.tasks)
    assert tasks["<CAPTION_TO_PHRASE_GROUNDING>"]["takes_text"] and not tasks["<OD>"]["takes_text"]
    info = httpx.get(f"{url}/v1/info").json()
    assert (info["target"], info["precision"], info["device"]) == ("onnx", "fp32", "cpu")
    assert info["checkpoint"] == model.manifest.source["model"]
    assert info["limits"]["max_beams"] == 8 and info["limits"]["max_queue"] == 16
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/kiosk.js" in page.text and "/static/kiosk.css" in page.text
    for asset in ("kiosk.js", "kiosk.css"):
        served = httpx.get(f"{url}/static/{asset}")
        assert served.status_code == 200 and len(served.text) > 100
    # Works with no internet: no file of the page refers to another host.
    for text in (page.text, httpx.get(f"{url}/static/kiosk.js").text, httpx.get(f"{url}/static/kiosk.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_predict_is_the_cli_record_and_the_direct_answer(service, model, onnx_artifact, tmp_path):
    url, _ = service
    image = make_image(2, (320, 240))
    for name, data in (("a.png", encoded(image)), ("a.jpg", encoded(image, "JPEG", quality=90))):
        response = post(url, data, name, task="<OD>")
        assert response.status_code == 200, response.text
        record = one_json_line(response)
        assert list(record) == RECORD_KEYS
        assert record["image"] == name and record["task"] == "<OD>" and record["image_size"] == [320, 240]
        path = tmp_path / name
        path.write_bytes(data)
        assert record["result"] == model(str(path), "<OD>", num_beams=1, max_new_tokens=12)["<OD>"]
    cli = subprocess.run([sys.executable, "-m", "runtime", "--model", str(onnx_artifact), str(tmp_path / "a.png"),
                          "--task", "<OD>", "--num-beams", "1", "--max-new-tokens", "12", "-q"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    line = json.loads(cli.stdout)
    assert list(line) == RECORD_KEYS
    answered = one_json_line(post(url, (tmp_path / "a.png").read_bytes(), "a.png", task="<OD>"))
    assert {k: v for k, v in answered.items() if k != "seconds"} == {
        **{k: v for k, v in line.items() if k != "seconds"}, "image": "a.png"}


def test_text_tasks_and_options(service, model):
    url, _ = service
    image = make_image(5, (200, 260))
    data = encoded(image)
    record = one_json_line(post(url, data, task="<CAPTION_TO_PHRASE_GROUNDING>", text="a red car"))
    task = "<CAPTION_TO_PHRASE_GROUNDING>"
    assert record["result"] == model(image, task, "a red car", num_beams=1, max_new_tokens=12)[task]
    record = one_json_line(post(url, data, task="<CAPTION>", num_beams="2", max_new_tokens="6"))
    assert record["result"] == model(image, "<CAPTION>", num_beams=2, max_new_tokens=6)["<CAPTION>"]


_TRUNCATED = encoded(make_image(3, (64, 64)))[:-40]
# (case, image bytes or None, upload name, fields over QUICK, status, words the error says)
BAD_REQUESTS = [
    ("not an image", b"hello, not pixels", "note.txt", {"task": "<OD>"}, 400, "not an image PIL can read"),
    ("corrupt image", _TRUNCATED, "cut.png", {"task": "<OD>"}, 400, "cannot"),
    ("empty file", b"", "empty.png", {"task": "<OD>"}, 400, "empty"),
    ("no image", None, "", {"task": "<OD>"}, 400, "'image' file"),
    ("unknown task", "png", "p.png", {"task": "<od>"}, 422, "did you mean '<OD>'"),
    ("no task", "png", "p.png", {}, 422, "expected a 'task' field"),
    ("missing text", "png", "p.png", {"task": "<CAPTION_TO_PHRASE_GROUNDING>"}, 422, "needs a text input"),
    ("unexpected text", "png", "p.png", {"task": "<OD>", "text": "a dog"}, 422, "takes no text input"),
    ("num_beams not a number", "png", "p.png", {"task": "<OD>", "num_beams": "many"}, 422, "num_beams must be an integer"),
    ("num_beams zero", "png", "p.png", {"task": "<OD>", "num_beams": "0"}, 422, "num_beams must be an integer >= 1"),
    ("num_beams over --max-beams", "png", "p.png", {"task": "<OD>", "num_beams": "9"}, 422, "--max-beams"),
    ("max_new_tokens over the model", "png", "p.png", {"task": "<OD>", "max_new_tokens": "100000"}, 422, "decoder positions"),
    ("unknown field", "png", "p.png", {"task": "<OD>", "temperature": "2"}, 422, "unexpected field 'temperature'"),
]


@pytest.mark.parametrize("case, data, name, fields, status, words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_one_json_line_with_its_status(service, png, case, data, name, fields, status, words):
    url, _ = service
    response = post(url, png if data == "png" else data, name, **fields)
    assert response.status_code == status, response.text
    assert words in one_json_line(response)["error"]


def test_other_bad_requests_and_the_service_keeps_serving(service, png, model):
    url, _ = service
    # A path in the image field is refused, never opened.
    path_field = httpx.post(f"{url}/v1/predict", files={"image": (None, "/etc/passwd"), "task": (None, "<OD>")})
    assert path_field.status_code == 400 and "never opens a path" in one_json_line(path_field)["error"]
    not_multipart = httpx.post(f"{url}/v1/predict", json={"image": "x", "task": "<OD>"})
    assert not_multipart.status_code == 400 and "multipart/form-data" in one_json_line(not_multipart)["error"]
    small = encoded(make_image(1, (32, 32)))
    two_files = httpx.post(f"{url}/v1/predict", data={"task": "<OD>"},
                           files=[("image", ("a.png", small)), ("image", ("b.png", small))])
    assert two_files.status_code == 400 and "got 2" in one_json_line(two_files)["error"]
    assert httpx.get(f"{url}/nowhere").status_code == 404
    wrong_method = httpx.get(f"{url}/v1/predict")
    assert wrong_method.status_code == 405 and "error" in one_json_line(wrong_method)
    good = post(url, png, task="<OD>")
    assert good.status_code == 200 and "result" in good.json()


def _raw_request(url: str, head: str, body: bytes = b"") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode() + body)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def test_upload_over_the_limit_is_413_declared_or_counted(service, png):
    url, _ = service  # the module's service takes 256 KiB
    # Declared: the 413 arrives although the body is never sent (the connection stays open for it).
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * 2**20}\r\nConnection: close\r\n\r\n")
    reply = _raw_request(url, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"error"' in reply and b"--max-upload-mb" in reply
    # Undeclared (chunked): counted while it streams in.
    big = encoded(make_image(4, (400, 400)), "BMP")  # ~480 KB
    boundary = "florence2"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\n<OD>\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"image\"; filename=\"big.bmp\"\r\n\r\n").encode() + big + \
        f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(form), 16384):
            yield form[start:start + 16384]

    response = httpx.post(f"{url}/v1/predict", content=chunks(), timeout=60,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "over the limit" in one_json_line(response)["error"]
    assert post(url, png, task="<OD>").status_code == 200  # and it keeps serving


def test_token_guards_the_api_but_not_the_page(model, png):
    with serving(model, token="s3cret") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            refused = httpx.get(f"{url}/v1/tasks", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert "error" in one_json_line(refused)
        assert post(url, png, task="<OD>").status_code == 401
        assert httpx.get(f"{url}/").status_code == 200 and httpx.get(f"{url}/healthz").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/v1/info", headers=auth).status_code == 200
        assert post(url, png, headers=auth, task="<OD>").status_code == 200


def test_full_queue_is_503_with_retry_after(model, png):
    gate = threading.Event()  # the worker waits on it before each batch
    with serving(model, gate=gate, max_queue=1) as (url, app):
        worker, answers = app.state.worker, {}

        def ask(key):
            answers[key] = post(url, png, task="<OD>")

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        wait_for(lambda: worker.load() == {"queued": 0, "running": 1}, what="the worker to take the first request")
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        wait_for(lambda: worker.load()["queued"] == 1, what="the second request to queue")
        assert httpx.get(f"{url}/healthz").json() == {"status": "ready", "queued": 1, "running": 1}
        full = post(url, png, task="<OD>")
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "queue is full" in one_json_line(full)["error"]
        gate.set()
        first.join(60)
        second.join(60)
        assert answers["first"].status_code == answers["second"].status_code == 200
        assert answers["first"].json()["result"] == answers["second"].json()["result"]


def test_waiting_requests_with_the_same_options_run_as_one_batch(model):
    gate = threading.Event()
    images = [make_image(10 + i, (160 + 20 * i, 120)) for i in range(4)]
    tasks = ["<OD>", "<CAPTION>", "<OD>", "<REGION_PROPOSAL>"]
    extra = [{}, {}, {}, {"max_new_tokens": "8"}]  # the last has other options: a batch of its own
    with serving(model, gate=gate) as (url, app):
        worker, answers = app.state.worker, {}

        def ask(i):
            answers[i] = post(url, encoded(images[i]), f"{i}.png", task=tasks[i], **extra[i])

        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        wait_for(lambda: worker.load()["running"] == 1, what="the first request to be taken")
        for i in (1, 2, 3):  # one after the other, so the queue's order is known
            threads.append(threading.Thread(target=ask, args=(i,)))
            threads[-1].start()
            wait_for(lambda i=i: worker.load()["queued"] == i, what=f"request {i} to queue")
        gate.set()
        for thread in threads:
            thread.join(60)
    assert worker.batches == [1, 2, 1]
    assert [answers[i].headers["x-batch-size"] for i in range(4)] == ["1", "2", "2", "1"]
    for i in range(4):
        options = {"num_beams": 1, "max_new_tokens": int(extra[i].get("max_new_tokens", QUICK["max_new_tokens"]))}
        assert answers[i].json()["result"] == model(images[i], tasks[i], **options)[tasks[i]]


def test_exposure_warning():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "t") is None
    assert "--token" in exposure_warning("0.0.0.0", None)


@pytest.mark.parametrize("args, words", [
    (["--model", "{missing}"], "artifact folder not found"),
    (["--model", "{art}", "--tls-cert", "{art}/manifest.json"], "--tls-cert and --tls-key go together"),
    (["--model", "{art}", "--max-queue", "0"], "expected an integer >= 1"),
    (["--model", "{art}", "--max-bach", "2"], "did you mean --max-batch?"),
    (["--model", "{art}", "--port", "70000"], "--port"),
])
def test_cli_errors_are_one_line_exit_2(onnx_artifact, tmp_path, args, words):
    argv = [a.format(missing=tmp_path / "none", art=onnx_artifact) for a in args]
    result = subprocess.run([sys.executable, "-m", "runtime.serve", *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert words in result.stderr


def test_cli_warns_for_an_exposed_address(tmp_path):
    result = subprocess.run([sys.executable, "-m", "runtime.serve", "--model", str(tmp_path / "none"), "--host",
                             "0.0.0.0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # the artifact is missing; the warning came first
    assert "warning: binding 0.0.0.0" in result.stderr and "--token" in result.stderr


class _FakeModel:
    """What the worker needs of a model: `run`, and a manifest saying static or not. `run` fails for a
    batch holding the image "poison", as a backend might."""

    def __init__(self, static=None):
        self.manifest = type("Manifest", (), {"static": static})()
        self.calls = []

    def run(self, images, tasks, texts, **options):
        from runtime.errors import BackendError
        from runtime.model import Result

        self.calls.append(list(images))
        if "poison" in images:
            raise BackendError("the decoder graph failed")
        return [Result([2], "", {task: f"answer of {image}"}, (1, 1)) for image, task in zip(images, tasks)]


def test_a_failing_batch_is_rerun_one_by_one_and_a_static_artifact_never_batches():
    from runtime.errors import BackendError
    from runtime.serve.worker import InferenceWorker, Job

    gate = threading.Event()
    model = _FakeModel()
    worker = InferenceWorker(model, gate=gate).start()
    jobs = [Job(name, name, "<CAPTION>", None, {}) for name in ("a", "b", "poison", "c")]
    futures = [worker.submit(job) for job in jobs]
    gate.set()
    answers = [f.exception(30) or f.result()[0]["result"] for f in futures]
    worker.stop()
    assert answers[:2] == ["answer of a", "answer of b"] and answers[3] == "answer of c"
    assert isinstance(answers[2], BackendError)
    assert ["a", "b", "poison", "c"] in model.calls  # tried as one batch first, then alone
    assert InferenceWorker(_FakeModel(static={"prompt_bucket": 32}), max_batch=8).max_batch == 1


def test_tls_cert_and_key_serve_https(onnx_artifact, tmp_path):
    from serve_tools import free_port

    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "runtime.serve", "--model", str(onnx_artifact), "--port",
                                str(port), "--tls-cert", str(cert), "--tls-key", str(key), "--log-level", "warning"],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        def up():
            try:
                return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2).status_code == 200
            except httpx.HTTPError:
                return service.poll() is not None
        wait_for(up, timeout=120, what="the HTTPS service")
        assert service.poll() is None, service.stderr.read()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # plain HTTP is not served
    finally:
        service.terminate()
        service.wait(60)
