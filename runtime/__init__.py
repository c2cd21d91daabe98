"""florence2-edge runtime: run an exported Florence-2 artifact with numpy, pillow, tokenizers and one backend.

    from runtime import Florence2, parse
    model = Florence2.load("florence2-artifact")
    model("photo.jpg", "<OD>")
"""

from .errors import ArtifactError, Florence2Error, ImageError, TaskError
from .generation import GenerationOptions
from .model import Florence2
from .postprocess import parse

__all__ = ["Florence2", "parse", "GenerationOptions", "Florence2Error", "ArtifactError", "ImageError", "TaskError"]
