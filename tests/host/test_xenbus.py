"""The xenbus handshake as pure transitions: both halves walked to Connected and back."""

from __future__ import annotations

from stubdom.host.xenbus import (
    BackendHandshake,
    FrontendHandshake,
    XenbusState,
    backend_path,
    frontend_path,
)


def run(
    backend: XenbusState,
    frontend: XenbusState,
    online: bool = True,
    closing: bool = False,
    ready: bool = True,
    skip_initialised: bool = False,
) -> list[tuple[XenbusState, XenbusState]]:
    """Let both sides react until nothing changes; the trace of (backend, frontend)."""
    be, fe = BackendHandshake(), FrontendHandshake(skip_initialised=skip_initialised)
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
    trace = run(XenbusState.INITIALISING, XenbusState.INITIALISING)
    assert trace[-1] == (XenbusState.CONNECTED, XenbusState.CONNECTED)
    backends = [b for b, _ in trace]
    assert backends.index(XenbusState.INIT_WAIT) < backends.index(XenbusState.CONNECTED)


def test_connect_as_consfront_skips_initialised() -> None:
    trace = run(XenbusState.INITIALISING, XenbusState.INITIALISING, skip_initialised=True)
    assert trace[-1] == (XenbusState.CONNECTED, XenbusState.CONNECTED)
    assert XenbusState.INITIALISED not in [f for _, f in trace]
    assert XenbusState.INITIALISED in [f for _, f in run(XenbusState.INITIALISING,
                                                         XenbusState.INITIALISING)]


def test_backend_waits_until_set_up() -> None:
    assert run(XenbusState.INITIALISING, XenbusState.INITIALISING, ready=False)[-1] == (
        XenbusState.INITIALISING,
        XenbusState.INITIALISING,
    )


def test_toolstack_removal_goes_through_closing_to_closed() -> None:
    trace = run(XenbusState.CLOSING, XenbusState.CONNECTED, online=False)
    assert trace[-1] == (XenbusState.CLOSED, XenbusState.CLOSED)
    assert (XenbusState.CLOSING, XenbusState.CLOSING) in trace


def test_removal_without_a_frontend_closes_at_once() -> None:
    assert run(XenbusState.CLOSING, XenbusState.UNKNOWN, online=False)[-1][0] is XenbusState.CLOSED
    assert (
        run(XenbusState.INIT_WAIT, XenbusState.INITIALISING, online=False)[-1][0]
        is XenbusState.CLOSED
    )


def test_frontend_initiated_close() -> None:
    trace = run(XenbusState.CONNECTED, XenbusState.CONNECTED, closing=True)
    assert trace[-1] == (XenbusState.CLOSED, XenbusState.CLOSED)


def test_parse_and_paths() -> None:
    assert (
        XenbusState.parse(b"4") is XenbusState.CONNECTED
        and XenbusState.parse(b"x") is XenbusState.UNKNOWN
        and XenbusState.parse(None) is XenbusState.UNKNOWN
    )
    assert frontend_path(5, "console", 0) == "/local/domain/5/console"
    assert frontend_path(5, "vbd", 768) == "/local/domain/5/device/vbd/768"
    assert backend_path(5, "vif", 0) == "/local/domain/0/backend/vif/5/0"


def test_a_frontend_that_missed_connected_catches_up_with_a_reconfiguring_backend() -> None:
    fe = FrontendHandshake()
    assert (
        fe.next_state(XenbusState.INITIALISED, XenbusState.RECONFIGURING) is XenbusState.CONNECTED
    )
    assert fe.next_state(XenbusState.INITIALISED, XenbusState.RECONFIGURED) is XenbusState.CONNECTED
