"""Batch OCR on a Ray cluster with Ray Data: the job of `python -m runtime --output`, scaled out.

    python examples/ray_batch_ocr.py --model ARTIFACT scans/ report.pdf --task "<OCR>" \
        --output results.jsonl [--address auto] [--concurrency 4] [--cpus-per-actor 2] [--batch-size 4] \
        [--max-new-tokens N] [--num-beams N] [--dpi 200] [--recursive] [--restart]

The driver lists the items (runtime/batch/items.py: files, folders, PDF pages, TIFF frames), skips
those its results file already answers, and hands the rest to Ray Data: `map_batches` with an actor
class that loads one `Florence2` per actor and runs a batch of items per call (decode, render,
model, parse), returning one record per item (runtime/records.py, the CLI's). The driver streams the
records back and appends them to ONE results file, in completion order, with the same header,
fsync, lock and resume rules as the CLI (runtime/batch/results.py): a results file written here
resumes with the CLI and the other way round.

Cluster: `--address auto` (or ray://head:10001) joins a running cluster instead of starting a local
Ray. Workers open the artifact and the input files by the paths given here, so both must be at the
same path on every node (a shared file system, or copied to each node first).
Ray is an optional extra (`pip install 'florence2-edge[ray]'`); the runtime never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class OCRActor:
    """One loaded model per actor; `__call__` turns a batch of item rows into record rows."""

    def __init__(self, artifact: str, task: str, text: str | None, generation: dict, source: dict, device: str):
        from runtime import Florence2
        from runtime.batch.pipeline import Runner, make_loader
        from runtime.batch.sources import SourceOptions

        self.model = Florence2.load(artifact, device=device)
        self.task = task
        self.load = make_loader(self.model.preprocessor, SourceOptions(**source), keep_original=False)
        self.runner = Runner(self.model, task, text, generation)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from runtime.batch.items import Item
        from runtime.batch.pipeline import to_record

        loaded = [self.load(Item(**json.loads(row))) for row in batch["item"]]
        records = [json.dumps(to_record(outcome, self.task, source=True)) for outcome in self.runner(loaded)]
        return {"record": np.array(records, dtype=object)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--model", required=True, help="artifact folder (at this path on every worker)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--text")
    parser.add_argument("--output", required=True, type=Path, help="results file (JSON lines, resumable)")
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--recursive", "-r", action="store_true")
    parser.add_argument("--dpi", type=float, default=200.0)
    parser.add_argument("--exif-transpose", action="store_true")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--min-new-tokens", type=int)
    parser.add_argument("--num-beams", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4, help="items per actor call (default 4)")
    parser.add_argument("--concurrency", type=int, default=1, help="actors, one model each (default 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs Ray reserves per actor (default 1)")
    parser.add_argument("--address", help="a running cluster (auto, ray://host:10001); default: a local Ray")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--object-store-mb", type=int, help="object store of a local Ray, in MB")
    return parser.parse_args(argv)


def job_header(args, generation: dict) -> dict:
    """The results header the CLI would write for the same job (so either can resume the file)."""
    from dataclasses import asdict

    from runtime.batch.results import make_header
    from runtime.batch.sources import SourceOptions
    from runtime.defaults import default_options
    from runtime.manifest import read_manifest

    manifest = read_manifest(Path(args.model))
    options = default_options(manifest).replace(**generation)
    source = SourceOptions(dpi=args.dpi, exif_transpose=args.exif_transpose)
    return make_header(manifest.checksum, args.task, args.text, asdict(options), source.pixel_options())


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from runtime.batch.items import scan
    from runtime.batch.results import ResultsFile
    from runtime.errors import Florence2Error

    generation = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("min_new_tokens", args.min_new_tokens),
                                    ("num_beams", args.num_beams)) if v is not None}
    try:
        items = scan(args.inputs, recursive=args.recursive).items
        header = job_header(args, generation)
        results = ResultsFile.open(args.output, header, {i.name: i.source for i in items}, args.restart)
    except Florence2Error as err:
        print(f"ray_batch_ocr: error: {err}", file=sys.stderr)
        return 2
    todo = [json.dumps(item.to_dict()) for item in items if item.name not in results.done]
    local = {} if args.address else {"num_cpus": args.num_cpus, "include_dashboard": False,
                                     "object_store_memory": args.object_store_mb and args.object_store_mb * 2**20}
    ray.init(address=args.address, **{k: v for k, v in local.items() if v is not None})
    failed = 0
    try:
        if todo:
            source = {"dpi": args.dpi, "exif_transpose": args.exif_transpose}
            # A fixed pool of --concurrency actors, each holding one model for the whole job.
            pool = ray.data.ActorPoolStrategy(size=args.concurrency)
            records = ray.data.from_items([{"item": row} for row in todo]).map_batches(
                OCRActor, batch_size=args.batch_size, compute=pool, num_cpus=args.cpus_per_actor,
                fn_constructor_kwargs=dict(artifact=str(Path(args.model).resolve()), task=args.task, text=args.text,
                                           generation=generation, source=source, device=args.device))
            for row in records.iter_rows():
                record = json.loads(row["record"])
                failed += "error" in record
                results.append(record)
    finally:
        results.close()
        ray.shutdown()
    print(f"ray_batch_ocr: {len(items)} items: {len(todo) - failed} answered, {len(items) - len(todo)} skipped "
          f"(already done), {failed} failed -> {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
