"""The Florence-2 task table: prompt template and parse type per task token.

One table drives prompt construction (`runtime.prompts`) and post-processing (`runtime.postprocess`).
It mirrors `transformers.Florence2Processor` (task_prompts_without_inputs / task_prompts_with_input /
tasks_answer_post_processing_type); an artifact's manifest carries its own copy, so a fine-tune with
other tasks only needs a different manifest.
"""

from __future__ import annotations

from dataclasses import dataclass


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
