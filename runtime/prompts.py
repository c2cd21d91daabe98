"""The text the encoder sees for a task, as `transformers.Florence2Processor` builds it.

transformers joins the task token and the user's text into one string, then
`_construct_prompts` swaps the token for the task's prompt: a no-input task must be the whole
string, a with-input task gets `string.replace(token, "").strip()` in place of `{input}`. We take
task and text apart, so the same result needs the text stripped. The tokenizer wrapper adds
`<s>`/`</s>`, and the runtime puts the image features where transformers puts its `<image>` tokens.

Where transformers silently does something odd, we raise a `TaskError` instead:
- a with-input task without text (transformers builds e.g. "Locate  in the image.");
- text containing a task token (transformers deletes the task's own token from the text, raises
  on a no-input token, and lets an earlier with-input token take over the task).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from .errors import ArtifactError, TaskError
from .tasks import TASKS, Task


def build_prompt(task: str, text: str | None = None, tasks: Mapping[str, Task] = TASKS) -> str:
    """Prompt string for `task` (a token such as "<OD>"), with `text` for tasks that take input."""
    spec = _lookup(task, tasks)
    if text is not None and not isinstance(text, str):
        raise TaskError(f"expected the text for {task} to be a string; got {type(text).__name__}")
    if not spec.takes_input:
        # "" is what transformers sees when nothing follows the token; anything else, even
        # whitespace, makes it raise too.
        if text:
            raise TaskError(f"{task} takes no text input; got {text!r}")
        return spec.prompt
    stripped = (text or "").strip()
    if not stripped:
        raise TaskError(f"{task} needs a text input, e.g. {_example(spec)!r}; got {text!r}")
    inner = next((token for token in tasks if token in stripped), None)
    if inner is not None:
        raise TaskError(f"expected text without task tokens for {task}; got {inner} in {text!r}")
    try:
        return spec.prompt.format(input=stripped)  # format, like transformers: same "{{" handling
    except (KeyError, IndexError, ValueError) as err:
        raise ArtifactError(
            f"expected a prompt template with one {{input}} field for {task}; got {spec.prompt!r} ({err!r})"
        ) from None


def _lookup(task: str, tasks: Mapping[str, Task]) -> Task:
    if not isinstance(task, str):
        raise TaskError(f"expected a task token such as '<CAPTION>'; got {type(task).__name__}")
    if task in tasks:
        return tasks[task]
    # Compare the canonical spelling too, so "od" or "<caption >" find their task. We only
    # suggest it: running a task the user did not name would be a silent rewrite.
    canonical = "<" + task.strip().strip("<>").strip().upper().replace(" ", "_") + ">"
    close = difflib.get_close_matches(canonical, list(tasks), n=1, cutoff=0.6)
    if close:
        raise TaskError(f"unknown task {task!r}; did you mean {close[0]!r}?")
    raise TaskError(f"unknown task {task!r}; expected one of: {', '.join(tasks)}")


def _example(spec: Task) -> str:
    return "<loc_100><loc_200><loc_300><loc_400>" if "region" in spec.prompt.lower() else "a red car"
