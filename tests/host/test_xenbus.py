"""The xenbus handshake as pure transitions: both halves walked to Connected and back."""

from __future__ import annotations

from stubdom.host.xenbus import (
    BackendHandshake,
    FrontendHandshake,
    XenbusState,
    backend_path,
    frontend_path,
)

S = XenbusState


def run(
    backend: S, frontend: S, online: bool = True, closing: bool = False, ready: bool = True
) -> list[tuple[S, S]]:
    """Let both sides react until nothing changes; the trace of (backend, frontend)."""
    be, fe = BackendHandshake(), FrontendHandshake()
    trace = [(backend, frontend)]
    for _ in range(20):
        nb = be.next_state(backend, frontend, online, ready)
        if nb is not None:
            backend = nb
        nf = fe.next_state(frontend, backend, closing)
        if nf is not None:
            frontend = nf
        if nb is None and nf is None:
            break
        trace.append((backend, frontend))
    return trace


def test_connect() -> None:
    trace = run(S.INITIALISING, S.INITIALISING)
    assert trace[-1] == (S.CONNECTED, S.CONNECTED)
    backends = [b for b, _ in trace]
    assert backends.index(S.INIT_WAIT) < backends.index(S.CONNECTED)


def test_backend_waits_until_set_up() -> None:
    assert run(S.INITIALISING, S.INITIALISING, ready=False)[-1] == (S.INITIALISING, S.INITIALISING)


def test_toolstack_removal_goes_through_closing_to_closed() -> None:
    trace = run(S.CLOSING, S.CONNECTED, online=False)
    assert trace[-1] == (S.CLOSED, S.CLOSED)
    assert (S.CLOSING, S.CLOSING) in trace


def test_removal_without_a_frontend_closes_at_once() -> None:
    assert run(S.CLOSING, S.UNKNOWN, online=False)[-1][0] is S.CLOSED
    assert run(S.INIT_WAIT, S.INITIALISING, online=False)[-1][0] is S.CLOSED


def test_frontend_initiated_close() -> None:
    trace = run(S.CONNECTED, S.CONNECTED, closing=True)
    assert trace[-1] == (S.CLOSED, S.CLOSED)


def test_parse_and_paths() -> None:
    assert (
        S.parse(b"4") is S.CONNECTED and S.parse(b"x") is S.UNKNOWN and S.parse(None) is S.UNKNOWN
    )
    assert frontend_path(5, "console", 0) == "/local/domain/5/console"
    assert frontend_path(5, "vbd", 768) == "/local/domain/5/device/vbd/768"
    assert backend_path(5, "vif", 0) == "/local/domain/0/backend/vif/5/0"


def test_a_frontend_that_missed_connected_catches_up_with_a_reconfiguring_backend() -> None:
    fe = FrontendHandshake()
    assert fe.next_state(S.INITIALISED, S.RECONFIGURING) is S.CONNECTED
    assert fe.next_state(S.INITIALISED, S.RECONFIGURED) is S.CONNECTED
