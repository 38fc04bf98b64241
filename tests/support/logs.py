"""Log capture for tests where pytest's caplog does not fit (inside hypothesis @given)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """The warnings the ``stubdom`` loggers log meanwhile."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record)

    handler = Keep()
    logger = logging.getLogger("stubdom")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
