"""The Florence-2 task table: prompt template and parse type per task token.

One table drives prompt construction (`runtime.prompts`) and post-processing (`runtime.postprocess`).
`TASKS` mirrors `transformers.Florence2Processor` (task_prompts_without_inputs / task_prompts_with_input
/ tasks_answer_post_processing_type); an artifact's manifest carries its own table, which is the one a
loaded model uses for both, so a fine-tune's own tasks (`python -m export --tasks tasks.json`) are
prompted and parsed as declared.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

# The parse types runtime.postprocess implements (its PARSERS table), as transformers names them.
PARSE_TYPES = ("pure_text", "ocr", "phrase_grounding", "description_with_bboxes", "bboxes",
               "description_with_polygons", "polygons", "description_with_bboxes_or_polygons")
_TASK_TOKEN = re.compile(r"<[^<>\s{}]+>")


@dataclass(frozen=True)
class Task:
    token: str  # "<OD>"
    prompt: str  # the text the model sees; "{input}" marks where the user's text goes
    parse_type: str  # a key of runtime.postprocess's parser table

    @property
    def takes_input(self) -> bool:
        return "{input}" in self.prompt


# (token, prompt, parse type), in the order Florence2Processor declares them.
_TABLE = [
    ("<OCR>", "What is the text in the image?", "pure_text"),
    ("<OCR_WITH_REGION>", "What is the text in the image, with regions?", "ocr"),
    ("<CAPTION>", "What does the image describe?", "pure_text"),
    ("<DETAILED_CAPTION>", "Describe in detail what is shown in the image.", "pure_text"),
    ("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image.", "pure_text"),
    ("<OD>", "Locate the objects with category name in the image.", "description_with_bboxes"),
    ("<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions.", "description_with_bboxes"),
    ("<REGION_PROPOSAL>", "Locate the region proposals in the image.", "bboxes"),
    ("<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}", "phrase_grounding"),
    ("<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask", "polygons"),
    ("<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}", "polygons"),
    ("<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image.", "description_with_bboxes_or_polygons"),
    ("<REGION_TO_CATEGORY>", "What is the region {input}?", "pure_text"),
    ("<REGION_TO_DESCRIPTION>", "What does the region {input} describe?", "pure_text"),
    ("<REGION_TO_OCR>", "What text is in the region {input}?", "pure_text"),
]

TASKS: dict[str, Task] = {token: Task(token, prompt, parse) for token, prompt, parse in _TABLE}

# The parse settings real Florence-2 checkpoints ship as the processor's `post_processor_config`
# (transformers' conversion script writes exactly these); exports copy the checkpoint's own.
DEFAULT_POST_PROCESSOR_CONFIG: dict = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {
        "banned_grounding_tokens": [
            "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they",
            "them", "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "you", "your", "yours",
            "they", "them", "their", "theirs", "mine", "yours", "his", "hers", "its", "ours", "yours", "theirs",
            "myself", "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves",
            "this", "that", "these", "those", "who", "whom", "whose", "which", "what", "who", "whom", "whose",
            "which", "that", "all", "another", "any", "anybody", "anyone", "anything", "each", "everybody",
            "everyone", "everything", "few", "many", "nobody", "none", "one", "several", "some", "somebody",
            "someone", "something", "each other", "one another", "myself", "yourself", "himself", "herself",
            "itself", "ourselves", "yourselves", "themselves", "the image", "image", "images", "the", "a",
            "an", "a group", "other objects", "lots", "a set",
        ],
    },
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


class TaskDeclarationError(ValueError):
    """A declared task that is malformed or would replace a built-in one."""


def declare_tasks(table: dict[str, Task], declared) -> dict[str, Task]:
    """`table` plus the tasks of a `--tasks` JSON object {token: {"prompt", "parse_type"[, "takes_text"]}},
    each validated: a task token, a known parse type, a prompt whose only field is `{input}` (required
    when "takes_text" is true, refused when false). A token already in `table` is refused: a
    declaration never silently replaces a built-in task."""
    if not isinstance(declared, dict) or not declared:
        raise TaskDeclarationError('expected a JSON object {"<TOKEN>": {"prompt": ..., "parse_type": ...}, ...}')
    merged = dict(table)
    for token, spec in declared.items():
        merged[token] = _declared_task(token, spec, table)
    return merged


def _declared_task(token: str, spec, table: dict[str, Task]) -> Task:
    where = f"task {token!r}"
    if not _TASK_TOKEN.fullmatch(token):
        raise TaskDeclarationError(f"{where}: expected a task token such as '<MY_TASK>' (no spaces or braces)")
    if token in table:
        raise TaskDeclarationError(f"{where} is already defined by the checkpoint (prompt {table[token].prompt!r}); "
                                   "declare a new token instead of replacing it")
    if not isinstance(spec, dict) or not {"prompt", "parse_type"} <= set(spec) or set(spec) - {"prompt", "parse_type", "takes_text"}:
        raise TaskDeclarationError(f'{where}: expected {{"prompt": str, "parse_type": str, optional "takes_text": bool}}, got {spec!r}')
    prompt, parse_type = spec["prompt"], spec["parse_type"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskDeclarationError(f"{where}: expected a non-empty prompt string, got {prompt!r}")
    if parse_type not in PARSE_TYPES:
        raise TaskDeclarationError(f"{where}: unknown parse_type {parse_type!r}; expected one of {', '.join(PARSE_TYPES)}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None]
    except ValueError as err:
        raise TaskDeclarationError(f"{where}: the prompt is not a valid template ({err}); write literal braces as {{{{ }}}}") from None
    if any(name != "input" for name in fields) or len(fields) > 1:
        raise TaskDeclarationError(f"{where}: the prompt may hold one {{input}} field and no other, got {prompt!r}")
    takes_text = spec.get("takes_text", bool(fields))
    if not isinstance(takes_text, bool) or takes_text != bool(fields):
        wanted = "needs an {input} field" if takes_text else "must not hold an {input} field"
        raise TaskDeclarationError(f"{where}: takes_text is {takes_text!r}, so the prompt {wanted}")
    return Task(token, prompt, parse_type)
