"""User-facing export errors: the CLI prints each as one line and exits 2 (1 for a failed parity gate)."""


class ExportError(Exception):
    """Bad input to an export: a checkpoint, a target, an option or an output folder."""


class ParityError(ExportError):
    """An exported graph disagrees with the PyTorch module it came from."""
