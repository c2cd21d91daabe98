"""Export side of florence2-edge: checkpoint -> split, validated graphs in one artifact folder.

Run `python -m export --help`. Heavy (torch, transformers, the target's converter); the runtime never
imports it.
"""

__version__ = "0.1.0"
