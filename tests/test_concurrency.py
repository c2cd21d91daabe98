"""One loaded model, called from many threads at once, on every backend that runs here: every answer
equals the one the same call gets alone, and the model holds no per-call state (calls do not change
it). OpenVINO used to give 7 of 8 concurrent calls "Infer Request is busy", and others wrong answers."""

from __future__ import annotations

import importlib.util
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime import Florence2
from runtime.probes import sample_image

THREADS, CALLS = 8, 6  # per thread
TARGETS = ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """OpenVINO's compile cache in a temporary folder, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLORENCE2_EDGE_CACHE", str(tmp_path_factory.mktemp("concurrency-cache")))
        yield


def jobs() -> list[tuple]:
    """Calls that differ in image, size, task, text, search and batch: a mix-up between two of them
    shows as a wrong answer. (images, task, text, options)"""
    images = [sample_image(40 + i, size) for i, size in enumerate([(160, 120), (90, 150), (128, 128), (300, 60)])]
    table = []
    for i, image in enumerate(images):
        table.append(([image], "<OD>", None, dict(num_beams=1, max_new_tokens=8)))
        table.append(([image], "<CAPTION>", None, dict(num_beams=3, max_new_tokens=8)))
        table.append(([image, images[(i + 1) % 4]], GROUNDING, "a red car", dict(num_beams=2, max_new_tokens=6)))
    return table


def _call(model: Florence2, job) -> list[tuple]:
    images, task, text, options = job
    with model.profile() as stages:  # thread-local: each call sees its own stages only
        runs = model.run(images, task, text, **options)
    assert stages["decode"] > 0 and set(stages) == {"preprocess", "vision", "encoder", "decode"}
    return [(r.ids, r.answer, r.image_size) for r in runs]


@pytest.mark.parametrize("target", TARGETS)
def test_threads_get_the_single_threaded_answers(variant_checkpoint, exported, target):
    model = Florence2.load(exported(variant_checkpoint("px128"), target))
    table = jobs()
    alone = [_call(model, job) for job in table]
    before = dict(vars(model))
    order = [i for _ in range(THREADS * CALLS // len(table) + 1) for i in range(len(table))][: THREADS * CALLS]
    random.Random(0).shuffle(order)
    start = threading.Barrier(THREADS)

    def worker(indices: list[int]) -> list[tuple[int, list]]:
        start.wait()  # all threads call at once
        return [(i, _call(model, table[i])) for i in indices]

    with ThreadPoolExecutor(THREADS) as pool:
        shares = [order[t::THREADS] for t in range(THREADS)]
        answers = [a for future in [pool.submit(worker, share) for share in shares] for a in future.result()]
    wrong = [i for i, answer in answers if answer != alone[i]]
    assert len(answers) == THREADS * CALLS and not wrong, f"{target}: {len(wrong)} of {len(answers)} calls wrong"
    after = vars(model)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # no call changed the model
