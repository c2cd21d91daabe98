"""Items -> answers: a bounded prefetch that decodes, renders and preprocesses the next items on worker
threads while the model runs the current batch, and a runner that turns a batch into outcomes.

Memory stays flat however many items there are: at most `depth` loaded items wait, each as the
model-sized image (768 x 768 RGB for Florence-2: 1.7 MB), plus the decoded original only when a side
file needs it (annotations, searchable PDFs).

Preprocessing overlaps too: a worker converts to RGB and resizes to the model's size exactly as the
preprocessor would (`prepare`); the preprocessor then finds an RGB image of its own size, which
Pillow's resize returns unchanged, so the pixels are bit-identical to `model(path)`. The answer is
parsed again for the original image size, which its coordinates refer to (parsing is cheap; the
generated ids do not depend on the size).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from ..errors import Florence2Error
from ..postprocess import parse
from ..records import error_record, result_record
from ..preprocess import Preprocessor, convert_rgb
from .items import Item
from .sources import SourceOptions, load_item


@dataclass
class Loaded:
    item: Item
    image: Image.Image | None = None  # what the model runs on (see `prepare`)
    size: tuple[int, int] | None = None  # (width, height) of the decoded image: the answer's coordinates
    original: Image.Image | None = None  # the decoded image, kept only for side files
    error: str | None = None


@dataclass
class Outcome:
    loaded: Loaded
    answer: object = None
    ids: list[int] | None = None
    seconds: float = 0.0
    error: str | None = None


def prepare(image: Image.Image, preprocessor: Preprocessor) -> Image.Image:
    """RGB conversion and resize, the preprocessor's own first steps, done ahead on a worker thread."""
    if image.mode != "RGB" or preprocessor.do_convert_rgb:
        if preprocessor.do_convert_rgb is False:
            return image  # the preprocessor refuses it, in its words, when the batch runs
        image = convert_rgb(image)
    if preprocessor.do_resize:
        image = image.resize((preprocessor.width, preprocessor.height), resample=Image.Resampling(preprocessor.resample))
    return image


def make_loader(preprocessor: Preprocessor, options: SourceOptions, keep_original: bool) -> Callable[[Item], Loaded]:
    def load(item: Item) -> Loaded:
        try:
            image = load_item(item, options)
            return Loaded(item, prepare(image, preprocessor), image.size, image if keep_original else None)
        except Florence2Error as err:
            return Loaded(item, error=str(err))
        except OSError as err:  # e.g. the file vanished between two reads
            return Loaded(item, error=f"cannot read {item.path!r}: {err.strerror or err}")

    return load


class Prefetch:
    """`load` applied to `items` on `workers` threads, at most `depth` ahead of the consumer, in order."""

    def __init__(self, items: Iterable[Item], load: Callable[[Item], Loaded], depth: int = 8, workers: int = 2):
        self._items, self._load, self._depth = iter(items), load, max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="florence2-prefetch")
        self._pending: collections.deque[Future] = collections.deque()

    def __iter__(self) -> Iterator[Loaded]:
        self._fill()
        while self._pending:
            loaded = self._pending.popleft().result()
            self._fill()
            yield loaded

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            item = next(self._items, None)
            if item is None:
                return
            self._pending.append(self._pool.submit(self._load, item))

    def close(self) -> None:
        """Drop what was not consumed; wait only for loads already running."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def batches(loaded: Iterable[Loaded], size: int) -> Iterator[list[Loaded]]:
    batch = []
    for entry in loaded:
        batch.append(entry)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Runner:
    """One model call per batch. A batch that fails is retried item by item, so a failure (a backend
    error, a limit) costs only the items that cause it; every failure is that item's error."""

    def __init__(self, model, task: str, text: str | None = None, generation: dict | None = None):
        self.model, self.task, self.text, self.generation = model, task, text, dict(generation or {})

    def __call__(self, batch: list[Loaded]) -> list[Outcome]:
        outcomes = {id(entry): Outcome(entry, error=entry.error) for entry in batch}
        good = [entry for entry in batch if entry.error is None]
        groups = [good] if good else []
        while groups:
            group = groups.pop(0)
            try:
                self._run(group, outcomes)
            except Florence2Error as err:
                if len(group) > 1:
                    groups = [[entry] for entry in group] + groups
                else:
                    outcomes[id(group[0])].error = str(err)
        return [outcomes[id(entry)] for entry in batch]

    def _run(self, group: list[Loaded], outcomes: dict) -> None:
        began = time.perf_counter()
        results = self.model.run([entry.image for entry in group], self.task, self.text, **self.generation)
        # A batch is one computation: each item is charged its share of the batch's time.
        seconds = (time.perf_counter() - began) / len(group)
        config, tasks = self.model.manifest.post_processing, self.model.tasks
        for entry, result in zip(group, results):
            answer = parse(result.text, self.task, entry.size, config, tasks)[self.task]
            outcome = outcomes[id(entry)]
            outcome.answer, outcome.ids, outcome.seconds = answer, result.ids, seconds


def to_record(outcome: Outcome, task: str, *, source: bool = False, ids: bool = False,
              files: list[str] | None = None) -> dict:
    """The item's record (runtime/records.py); `source` adds the file fingerprint that resuming
    matches (results files), `ids` the generated ids, `files` the side files written for it."""
    item = outcome.loaded.item
    extra = {"files": files} if files else {}
    if outcome.error is not None:
        return error_record(item.name, task, outcome.error, **extra)
    if source:
        extra = {"source": item.source, **extra}
    if ids:
        extra["ids"] = outcome.ids
    return result_record(item.name, task, outcome.answer, outcome.seconds, outcome.loaded.size, **extra)
