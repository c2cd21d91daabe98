"""`python -m runtime.serve`: one loaded artifact behind a local HTTP service, and the kiosk page.

    pip install "florence2-edge[serve,onnx]"
    python -m runtime.serve --model ARTIFACT [--host 127.0.0.1] [--port 8000] [--token T]

Modules: cli (arguments, uvicorn), app (endpoints), worker (the thread that owns the model, the
queue, batching), checks (a form -> a checked job), uploads (body limit, multipart), access (token,
exposure warning), errors (statuses), static/ (the page). Starlette and uvicorn are the `serve`
extra: nothing outside this package imports them, and `import runtime` never imports this package.
"""
