"""Helpers of the service tests: the app served by a real uvicorn on a free loopback port, in a thread
of the test process (so a test can hold the worker), and images as upload bytes."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

# The options every served test request uses: greedy and short, so a tiny random model answers fast.
QUICK = {"num_beams": "1", "max_new_tokens": "12"}


@contextlib.contextmanager
def serving(model, gate=None, **options):
    """Yields (base URL, app) of `create_app(model, ServiceOptions(**options), gate)` behind uvicorn."""
    import uvicorn

    from runtime.serve.app import ServiceOptions, create_app

    app = create_app(model, ServiceOptions(**options), gate=gate)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(60)


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def encoded(image, kind: str = "PNG", **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **save_options)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
