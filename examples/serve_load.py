"""A bounded load test of the service: a fixed number of requests from concurrent clients, then the
figures: requests, concurrency, throughput, p50/p95 latency, errors, and the batching gain.

    python examples/serve_load.py --model florence2-embedded-tiny-onnx [--requests 32] [--concurrency 8]
    python examples/serve_load.py --url http://127.0.0.1:8000 [--token T]      # a service already running

With --model, the service runs in this process on a free loopback port, twice: with batching (the
default --max-batch 8) and without (--max-batch 1), so the gain is measured on the same requests.
Every `--bad-every`-th request is a bad one on purpose (an unknown task, or bytes that are not an
image): it must get its 4xx, and it counts as an error only if it gets anything else.
Needs the serve extra and httpx. Exit status 1 if any request got an unexpected status.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TASKS = ("<OD>", "<CAPTION>", "<OCR>", "<REGION_PROPOSAL>")
SIZES = ((320, 240), (240, 320), (400, 300), (256, 256))


def build_requests(count: int, bad_every: int) -> list[dict]:
    """`count` requests: (upload name, bytes, fields, expected status), different images and tasks."""
    from runtime.probes import sample_image

    requests = []
    for i in range(count):
        buffer = io.BytesIO()
        sample_image(i, SIZES[i % len(SIZES)]).save(buffer, "PNG")
        request = {"name": f"{i}.png", "data": buffer.getvalue(), "task": TASKS[i % len(TASKS)], "expect": 200}
        if bad_every and i % bad_every == bad_every - 1:
            bad = (i // bad_every) % 2
            request.update(task="<O D>", expect=422) if bad == 0 else request.update(data=b"not pixels", expect=400)
        requests.append(request)
    return requests


def run_load(url: str, requests: list[dict], concurrency: int, options: dict, token: str | None = None) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local = threading.local()

    def send(request):
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600, headers=headers)
        began = time.perf_counter()
        response = local.client.post(f"{url}/v1/predict", files={"image": (request["name"], request["data"])},
                                     data={"task": request["task"], **options})
        return time.perf_counter() - began, response.status_code, request["expect"]

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(send, requests))
    wall = time.perf_counter() - began
    good = sorted(seconds for seconds, status, expect in outcomes if expect == 200 and status == 200)
    errors = sum(status != expect for _, status, expect in outcomes)
    return {"requests": len(requests), "concurrency": concurrency, "seconds": round(wall, 3),
            "throughput": round(len(requests) / wall, 3), "p50": round(_quantile(good, 0.50), 3),
            "p95": round(_quantile(good, 0.95), 3), "errors": errors,
            "bad_requests": sum(expect != 200 for _, _, expect in outcomes)}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def serve_and_load(model, max_batch: int, requests, concurrency: int, options: dict) -> dict:
    """Start the service on a free loopback port with `max_batch`, run the load, stop it."""
    import uvicorn

    from runtime.serve.app import ServiceOptions, create_app

    app = create_app(model, ServiceOptions(max_batch=max_batch, max_queue=max(16, len(requests))))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("serve_load: the service did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        return {**run_load(f"http://127.0.0.1:{port}", requests, concurrency, options), "max_batch": max_batch,
                "batches": list(app.state.worker.batches)}
    finally:
        server.should_exit = True
        thread.join()


def line(label: str, figures: dict) -> str:
    return (f"{label}: {figures['requests']} requests, concurrency {figures['concurrency']}: "
            f"{figures['throughput']:.2f} req/s, p50 {figures['p50']:.3f} s, p95 {figures['p95']:.3f} s, "
            f"errors {figures['errors']} ({figures['bad_requests']} bad requests sent on purpose)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="artifact folder: serve it here, with and without batching")
    target.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", help="the service's --token (with --url)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8, help="the batching run's --max-batch (with --model)")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--bad-every", type=int, default=8, help="every N-th request is bad on purpose (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    options = {"num_beams": str(args.num_beams), "max_new_tokens": str(args.max_new_tokens)}
    requests = build_requests(args.requests, args.bad_every)
    if args.url:
        runs = {"service": run_load(args.url.rstrip("/"), requests, args.concurrency, options, args.token)}
    else:
        from runtime import Florence2

        model = Florence2.load(args.model)
        runs = {"batching": serve_and_load(model, args.max_batch, requests, args.concurrency, options),
                "no_batching": serve_and_load(model, 1, requests, args.concurrency, options)}
        runs["gain"] = round(runs["batching"]["throughput"] / runs["no_batching"]["throughput"], 3)
    if args.json:
        print(json.dumps(runs))
    else:
        for key, figures in runs.items():
            if isinstance(figures, dict):
                label = {"batching": f"batching on (max batch {figures.get('max_batch')})",
                         "no_batching": "batching off (max batch 1)"}.get(key, key)
                print(line(label, figures))
        if "gain" in runs:
            print(f"batching gain: {runs['gain']:.2f}x throughput (batches run: {runs['batching']['batches']})")
    return 1 if any(isinstance(f, dict) and f["errors"] for f in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
