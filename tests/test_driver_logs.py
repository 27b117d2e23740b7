"""The driver's log says what an operator needs, once: no advice measured wrong here on every load."""

from __future__ import annotations

import logging

import llmos.drivers.loader  # noqa: F401  (installs its filter on transformers' GGUF logger)

GGUF_LOGGER = "transformers.quantizers.quantizer_gguf"


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_gguf_float32_advice_is_dropped_and_other_gguf_warnings_are_kept():
    logger, seen = logging.getLogger(GGUF_LOGGER), Collect()
    logger.addHandler(seen)
    try:
        logger.warning("Loading a GGUF checkpoint with its weights packed is fastest in float32, and this one "
                       "was asked for in torch.bfloat16.")
        logger.warning("some other GGUF trouble")
    finally:
        logger.removeHandler(seen)
    assert seen.messages == ["some other GGUF trouble"]
