"""A trained offline default: synthetic scenes, the trainer of a small Florence-2 on them, and the scorer.

- `scenes`: the generator (numpy + Pillow only): coloured shapes and rendered text with exact ground
  truth and the target text of every task, as Florence-2 writes it.
- `build`: the checkpoint's tokenizer, config and processor, and the folder they are saved as.
- `batches`: training batches, the losses and the image-dependence probes (torch).
- `train`: `python -m export.synthetic.train`, the curriculum, logging, checkpoints and resume.
- `score`: metric functions (torch-free) and `python -m export.synthetic.score`.
- `write`: `python -m export.synthetic.write`, held-out scenes as PNG files with their truth (torch-free).
- `weights/`: the shipped checkpoint, trained with `train` (see its README).
"""
