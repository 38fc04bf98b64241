"""`stubdom.eventloop`: the loop our processes run, and the choice of it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from stubdom import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(loop_module()).startswith("uvloop")


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.run(loop_module()).startswith("asyncio")


def test_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.run(loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "trio")
    main = loop_module()
    with pytest.raises(ValueError, match=r"STUBDOM_EVENT_LOOP='trio': use one of uvloop, asyncio"):
        eventloop.run(main)
    assert main.cr_frame is None  # closed: no "never awaited" warning

