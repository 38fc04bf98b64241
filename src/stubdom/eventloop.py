"""The event loop our processes run: uvloop's where it is installed, else asyncio's.

Each xenstore round trip of a Python process costs it one turn of its event loop, and
on the control channel the toolstack's and the agent's turns share a CPU: with uvloop a
client round trip executes about 40% fewer instructions (`bench/client_cost.py`).
Nothing of ours depends on which loop runs; ``STUBDOM_EVENT_LOOP=asyncio`` chooses
asyncio's (the tests' in-process code always runs on asyncio's, under pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV = "STUBDOM_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop``, or None for asyncio's own: when
    ``$STUBDOM_EVENT_LOOP`` says asyncio, or uvloop is missing (silently: uvloop only
    makes turns cheaper)."""
    wanted = os.environ.get(ENV, "") or "uvloop"
    if wanted not in CHOICES:
        raise ValueError(f"{ENV}={wanted!r}: use one of {', '.join(CHOICES)}")
    if wanted == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.debug("uvloop is not installed; running asyncio's event loop")
        else:
            return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the loop `loop_factory` chooses (asyncio's: `asyncio.run` itself)."""
    try:
        factory = loop_factory()
    except ValueError:
        main.close()
        raise
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
