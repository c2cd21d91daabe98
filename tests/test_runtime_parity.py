"""The runtime against transformers: identical generated ids (greedy, beam search, batches) and
identical parsed results, on fp32 ONNX artifacts of a tiny random checkpoint."""

from __future__ import annotations

import pytest
import torch

from runtime import Florence2

TASKS = [("<CAPTION>", None), ("<OD>", None), ("<OCR_WITH_REGION>", None),
         ("<CAPTION_TO_PHRASE_GROUNDING>", "a green car parked in front of a yellow building")]
MODES = {
    "greedy": dict(num_beams=1, no_repeat_ngram_size=0),
    "beams3_norepeat3": dict(num_beams=3, no_repeat_ngram_size=3),
}
MAX_NEW = 20


@pytest.fixture(scope="module")
def model(onnx_artifact):
    return Florence2.load(onnx_artifact)


def hf_generate(hf_model, hf_processor, images, prompts, **options):
    inputs = hf_processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        return hf_model.generate(**inputs, **options).tolist()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("task,text", TASKS)
def test_generate_ids_equal_transformers(model, hf_model, hf_processor, images, task, text, mode):
    options = dict(MODES[mode], max_new_tokens=MAX_NEW)
    prompt = task + (text or "")
    for image in images:
        want = hf_generate(hf_model, hf_processor, [image], [prompt], **options)[0]
        assert model.generate(image, task, text, **options) == want


def test_checkpoint_defaults_equal_transformers_defaults(model, hf_model, hf_processor, images):
    """No options: 3 beams, no-repeat 3-grams, forced BOS/EOS, early stopping, from the checkpoint."""
    for image in images[:2]:
        want = hf_generate(hf_model, hf_processor, [image], ["<OD>"], max_new_tokens=12)[0]
        assert model.generate(image, "<OD>", max_new_tokens=12) == want


@pytest.mark.parametrize("mode", MODES)
def test_batch_with_different_prompt_lengths(model, hf_model, hf_processor, images, mode):
    options = dict(MODES[mode], max_new_tokens=MAX_NEW)
    batch = images[:2]
    tasks, texts = ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>"], [None, "a cat sitting on a wooden table next to a cup"]
    want = hf_generate(hf_model, hf_processor, batch, [tasks[0], tasks[1] + texts[1]], **options)
    got = model.generate(batch, tasks, texts, **options)
    assert got == want
    # Row by row, batched ids equal single-image ids up to transformers' padding of finished rows.
    single = model.generate(batch[1], tasks[1], texts[1], **options)
    assert got[1][: len(single)] == single


@pytest.mark.parametrize("task,text", TASKS)
def test_parsed_results_equal_post_process_generation(model, hf_model, hf_processor, images, task, text):
    image = images[0]
    options = dict(num_beams=3, max_new_tokens=MAX_NEW)
    ids = hf_generate(hf_model, hf_processor, [image], [task + (text or "")], **options)
    decoded = hf_processor.batch_decode(ids, skip_special_tokens=False)[0]
    want = hf_processor.post_process_generation(decoded, task=task, image_size=image.size)
    assert model(image, task, text, **options) == want


def test_decoded_text_equals_transformers_batch_decode(model, hf_processor, images):
    ids = model.generate(images[1], "<OCR_WITH_REGION>", max_new_tokens=MAX_NEW)
    assert model.tokenizer.decode(ids) == hf_processor.batch_decode([ids], skip_special_tokens=False)[0]


def test_generation_options_are_checked(model, images):
    from runtime import GenerationOptions  # noqa: F401

    with pytest.raises(ValueError, match="num_beams"):
        model.generate(images[0], "<OD>", num_beams=0)
    with pytest.raises(ValueError, match="unknown generation option"):
        model.generate(images[0], "<OD>", temperature=0.7)
