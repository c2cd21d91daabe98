"""onnxruntime's quantizers log per node, and advice, through the root logger: silenced around them."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_quantizers():
    """onnxruntime's quantizers log per node, and advice, through the root logger (logging.info):
    not the user's concern. Our own log says what happens."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
