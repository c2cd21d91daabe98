"""runtime.prompts against transformers.Florence2Processor._construct_prompts."""

from __future__ import annotations

import pytest

from runtime.errors import Florence2Error, TaskError
from runtime.prompts import build_prompt
from runtime.tasks import TASKS

TEXTS = ["a red car", "  padded text\t", "<loc_100><loc_200><loc_300><loc_400>", "{braces} stay", "ünïcode ✓"]
NO_INPUT = [token for token, task in TASKS.items() if not task.takes_input]
WITH_INPUT = [token for token, task in TASKS.items() if task.takes_input]


def _tiny_tokenizer():
    """A BART-style byte-level BPE tokenizer with an `<image>` token, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BartTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([task.prompt for task in TASKS.values()], trainer)
    return BartTokenizerFast(tokenizer_object=tokenizer, extra_special_tokens={"image_token": "<image>"})


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessorPil, Florence2Processor

    image_processor = CLIPImageProcessorPil(
        size={"height": 768, "width": 768}, do_center_crop=False, image_seq_length=577
    )
    return Florence2Processor(image_processor=image_processor, tokenizer=_tiny_tokenizer())


def test_reference_has_our_task_table(processor):
    reference = {**processor.task_prompts_without_inputs, **processor.task_prompts_with_input}
    assert {token: task.prompt for token, task in TASKS.items()} == reference
    assert {token: task.parse_type for token, task in TASKS.items()} == processor.tasks_answer_post_processing_type


@pytest.mark.parametrize("task", NO_INPUT)
@pytest.mark.parametrize("text", [None, ""])
def test_no_input_tasks_match_reference(processor, task, text):
    assert build_prompt(task, text) == processor._construct_prompts(task + (text or ""))[0]


@pytest.mark.parametrize("task", WITH_INPUT)
@pytest.mark.parametrize("text", TEXTS)
def test_with_input_tasks_match_reference(processor, task, text):
    assert build_prompt(task, text) == processor._construct_prompts(task + text)[0]


def test_processor_wraps_prompt_with_image_and_special_tokens(processor):
    # What our tokenizer wrapper and runtime must add around build_prompt's result.
    from PIL import Image

    inputs = processor(images=Image.new("RGB", (32, 32)), text="<OD>", return_tensors="np")
    tokenizer = processor.tokenizer
    expected = [tokenizer.image_token_id] * 577 + tokenizer(
        "<s>" + build_prompt("<OD>") + "</s>", add_special_tokens=False
    )["input_ids"]
    assert inputs["input_ids"][0].tolist() == expected


@pytest.mark.parametrize(
    ("task", "text", "message"),
    [
        ("<OD>", "cars", "<OD> takes no text input; got 'cars'"),
        ("<CAPTION>", " ", "<CAPTION> takes no text input; got ' '"),
        ("<OPEN_VOCABULARY_DETECTION>", None, "<OPEN_VOCABULARY_DETECTION> needs a text input"),
        ("<REGION_TO_OCR>", "  ", "<REGION_TO_OCR> needs a text input, e.g. '<loc_100>"),
        ("<CAPTION_TO_PHRASE_GROUNDING>", "a <OD> b", "got <OD> in 'a <OD> b'"),
        ("<REGION_TO_OCR>", "<REGION_TO_OCR>x", "got <REGION_TO_OCR> in"),
        ("<OD>", 3, "expected the text for <OD> to be a string; got int"),
        ("od", None, "unknown task 'od'; did you mean '<OD>'?"),
        ("<CAPTON>", None, "did you mean '<CAPTION>'?"),
        ("<more detailed caption>", None, "did you mean '<MORE_DETAILED_CAPTION>'?"),
        ("bananas", None, "unknown task 'bananas'; expected one of: <OCR>, <OCR_WITH_REGION>,"),
        (None, None, "expected a task token such as '<CAPTION>'; got NoneType"),
    ],
)
def test_errors_are_one_line_task_errors(task, text, message):
    with pytest.raises(TaskError) as info:
        build_prompt(task, text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, Florence2Error)


def test_unknown_task_lists_every_task():
    with pytest.raises(TaskError) as info:
        build_prompt("bananas")
    assert all(token in str(info.value) for token in TASKS)


def test_custom_task_table():
    from runtime.tasks import Task

    tasks = {"<COUNT>": Task("<COUNT>", "How many {input} are there?", "pure_text")}
    assert build_prompt("<COUNT>", " dogs ", tasks=tasks) == "How many dogs are there?"
    with pytest.raises(TaskError, match="did you mean '<COUNT>'"):
        build_prompt("<CONT>", "dogs", tasks=tasks)
