"""The batch job: options checked once, then items -> prefetch -> batches -> records and side files.

    job = Job(model, scan(["scans/"]), JobOptions(task="<OCR>", output=Path("results.jsonl")))
    job.open()              # every refusal (a results file of another job, a locked one, an output
                            # folder that is not ours) is a JobError here, before any item runs
    summary = job.run()     # one record per item, as each finishes; Ctrl-C stops it cleanly

A failing item (unreadable file, bad PDF page, backend error) is its own error record; the job goes
on. Ctrl-C drops the batch in flight (its items run again on resume), writes nothing half and
returns the summary with `interrupted` set.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Florence2Error
from .errors import JobError
from .items import Scan
from .outputs import Outputs
from .pipeline import Outcome, Prefetch, Runner, batches, make_loader, to_record
from .progress import PROG, Progress, Summary
from .results import ResultsFile, make_header
from .sources import SourceOptions

__all__ = ["Job", "JobOptions", "SourceOptions"]

# Parse types whose answer has a plain text (--text-dir) and the one with quad boxes (--searchable-pdf).
TEXT_PARSE_TYPES = ("pure_text", "ocr")
QUAD_PARSE_TYPE = "ocr"


@dataclass(frozen=True)
class JobOptions:
    task: str
    text: str | None = None
    generation: dict = field(default_factory=dict)  # overrides of the artifact's generation defaults
    batch_size: int = 1
    source: SourceOptions = field(default_factory=SourceOptions)
    output: Path | None = None  # None: records on stdout
    restart: bool = False
    annotate: Path | None = None
    text_dir: Path | None = None
    searchable_pdf: Path | None = None
    ids: bool = False
    prefetch: int | None = None  # items loaded ahead; default 2 x batch_size + 2
    workers: int = 2  # loading threads

    def __post_init__(self) -> None:
        _verify(self)

    @property
    def depth(self) -> int:
        return self.prefetch if self.prefetch is not None else 2 * self.batch_size + 2


def _verify(o: JobOptions) -> None:
    """The one place job options are checked (model-dependent checks: `Job.__init__`)."""
    for name, value, low in (("batch_size", o.batch_size, 1), ("workers", o.workers, 1),
                             ("max_pixels", o.source.max_pixels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise JobError(f"{name} must be an integer >= {low}, got {value!r}")
    if o.prefetch is not None and (not isinstance(o.prefetch, int) or o.prefetch < 1):
        raise JobError(f"prefetch must be an integer >= 1, got {o.prefetch!r}")
    if not 10 <= o.source.dpi <= 2400:
        raise JobError(f"dpi must be between 10 and 2400, got {o.source.dpi:g}")
    if o.restart and o.output is None:
        raise JobError("--restart needs --output (the results file to start over)")


class Job:
    def __init__(self, model, items: Scan, options: JobOptions, stdout=None, stderr=None):
        from ..prompts import build_prompt

        self.model, self.scan, self.options = model, items, options
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        build_prompt(options.task, options.text, model.tasks)  # unknown task or wrong text: TaskError, now
        try:
            generation = model.defaults.replace(**options.generation)
        except ValueError as err:  # e.g. --max-new-tokens below the artifact's min_new_tokens
            raise JobError(str(err)) from None
        parse_type = model.tasks[options.task].parse_type
        if options.text_dir is not None and parse_type not in TEXT_PARSE_TYPES:
            raise JobError(f"--text-dir writes the text of OCR and caption tasks; {options.task} answers {parse_type}")
        if options.searchable_pdf is not None and parse_type != QUAD_PARSE_TYPE:
            raise JobError(f"--searchable-pdf places text at OCR boxes: use <OCR_WITH_REGION>, not {options.task}")
        self.header = make_header(model.manifest.checksum, options.task, options.text,
                                  _options_dict(generation), options.source.pixel_options())
        self.outputs = Outputs(items.items, options.annotate, options.text_dir, options.searchable_pdf,
                               options.source.dpi)
        self.results: ResultsFile | None = None

    def open(self) -> None:
        """Lock and read the results file, prepare output folders; JobError on any refusal."""
        if self.options.searchable_pdf is not None:
            from .searchable import _pypdf

            _pypdf()  # the extra is missing: say so now, not after the first item
        if self.options.output is not None:
            sources = {item.name: item.source for item in self.scan.items}
            self.results = ResultsFile.open(self.options.output, self.header, sources, self.options.restart)
        try:
            self.outputs.prepare()
        except BaseException:
            self.close()
            raise
        if self.results is not None:
            items = {item.name: item for item in self.scan.items}
            for name, record in self.results.done.items():
                self.outputs.remember(record, items[name])

    def close(self) -> None:
        if self.results is not None:
            self.results.close()
            self.results = None

    def run(self, progress: bool = False) -> Summary:
        done = self.results.done if self.results is not None else {}
        todo = [item for item in self.scan.items if item.name not in done]
        summary = Summary(items=len(self.scan.items), skipped=len(self.scan.items) - len(todo),
                          hidden=self.scan.hidden, other=self.scan.other)
        if self.results is not None and self.results.repaired:
            print(f"{PROG}: note: removed a torn last line of {self.options.output} (a run was killed while "
                  "writing it)", file=self.stderr, flush=True)
        bar = Progress(len(todo), progress, self.stderr)
        loader = make_loader(self.model.preprocessor, self.options.source, self.outputs.needs_image)
        prefetch = Prefetch(todo, loader, self.options.depth, self.options.workers)
        runner = Runner(self.model, self.options.task, self.options.text, self.options.generation)
        began = time.monotonic()
        try:
            for batch in batches(prefetch, self.options.batch_size):
                for outcome in runner(batch):
                    self._finish(outcome, summary, bar)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.seconds = time.monotonic() - began
            prefetch.close()
            bar.close()
            self.close()
        return summary

    def _finish(self, outcome: Outcome, summary: Summary, bar: Progress) -> None:
        """Side files, then the record: a record never names a file not yet written."""
        loaded, item, files = outcome.loaded, outcome.loaded.item, []
        try:
            if outcome.error is None:
                files = self.outputs.write(item, outcome.answer, loaded.original, loaded.size)
            else:
                files = self.outputs.settle(item, None, None)
        except (Florence2Error, OSError) as err:
            outcome.error = f"cannot write the side files of {item.name}: {_one_line(err)}"
        record = to_record(outcome, self.options.task, source=self.results is not None, ids=self.options.ids,
                           files=files)
        if outcome.error is None:
            summary.answered += 1
        else:
            summary.failed += 1
            where = "" if item.name in outcome.error or item.path in outcome.error else f"{item.name}: "
            bar.note(f"{PROG}: error: {where}{record['error']}")
        self._emit(record)
        bar.update(failed=outcome.error is not None)

    def _emit(self, record: dict) -> None:
        if self.results is not None:
            self.results.append(record)
        else:
            # Flushed per line, so a consumer piping the output sees each item as soon as it is done.
            print(json.dumps(record), file=self.stdout, flush=True)


def _options_dict(options) -> dict:
    return asdict(options)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
