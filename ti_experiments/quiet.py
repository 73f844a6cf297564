"""Third-party messages a user cannot act on, kept off the console, so that what is printed matters.

Each is named exactly (its logger and its words), so a new message of the same library still shows.
"""

from __future__ import annotations

import logging

# (logger, words of the message): said on every evaluation and generation by importing diffusers'
# pipelines, whose image processors this project never asks torchvision for
DROPPED = (
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back"),
)


class _Drop(logging.Filter):
    def __init__(self, words: str):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


def install() -> None:
    """Drop the messages of DROPPED (once per process, however often it is called); imports nothing."""
    for name, words in DROPPED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.words == words for f in logger.filters):
            logger.addFilter(_Drop(words))


def loading_bars_off() -> None:
    """transformers' "Loading weights" bar: local weights load in a fraction of a second, and the bar
    leaves two lines per model in the log. Downloads keep their bars (huggingface_hub's own)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
