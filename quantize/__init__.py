"""Precision passes per target and the fidelity report (see the quantization issue); nothing yet."""
