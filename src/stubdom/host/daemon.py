"""The host daemon: dom0's side of the simulated Xen host, as one background process.

It holds what must outlive a single command: the hypervisor (domains are its child
processes), the device and console backends, and dom0's xenstore connections.  Other
processes reach the hypervisor through `stubdom.host.api` on ``DIR/host.sock``.
``stubdom host up`` starts it (``stubdom host daemon --dir DIR``) after xenstored.

With cxenstored or oxenstored traced (``host up --xenstored cx --trace FILE``), the
daemon's socket is ``DIR/xenstored/real/socket`` and this process serves dom0's
``DIR/xenstored/socket`` with the tracing proxy (`stubdom.host.xsproxy`), started before
anything connects and stopped after everything else, and the domains' relays record into
the same trace (`stubdom.host.xstrace`).

It stops on SIGTERM, SIGINT or the API's ``shutdown``: the API closes first, then every
domain is destroyed, the backends stop, and the socket and pid file go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from typing import Any

from stubdom import eventloop
from stubdom.host.api import ApiServer
from stubdom.host.rundir import RunDir, write_pid
from stubdom.host.xslink import Daemon, OursLink, RealLink, XenstoredLink
from stubdom.host.xsproxy import TracingProxy
from stubdom.host.xstrace import TraceWriter
from stubdom.xenstore import RECONNECT, Client
from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)

#: The nodes xencommons writes for dom0 at boot (``xenstore-write /local/domain/0/...``).
DOM0_NODES = {"/local/domain/0/name": "Domain-0", "/local/domain/0/domid": "0"}


def _optional(module: str, name: str) -> Any | None:
    """``module.name``, or None (with a warning) while that part of the host is missing.

    Only the module itself being absent is tolerated; an import error inside it is a bug
    and propagates.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        log.warning("%s is not available (%s); running without %s", module, e, name)
        return None
    obj = getattr(mod, name, None)
    if obj is None:
        log.warning("%s has no %s; running without it", module, name)
    return obj


async def _init_dom0(xs: Client) -> None:
    for path, value in DOM0_NODES.items():
        await xs.write(path, value)


async def serve(run_dir: RunDir, trace_file: str | None = None) -> None:
    """Run the host until asked to stop; everything started is stopped on the way out.

    ``trace_file``: a real xenstored's packets are appended there (ours traces itself).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    xenstored_socket = str(run_dir.xenstored_socket)

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(_remove, run_dir.host_pid)
        trace = await _tracing_proxy(run_dir, trace_file, stack)

        clients: list[Client] = []

        async def connect(purpose: str) -> Client:
            xs = await Client.connect(xenstored_socket, reconnect=RECONNECT)
            stack.push_async_callback(xs.close)
            clients.append(xs)
            log.debug("connected to xenstored for %s", purpose)
            return xs

        xs = await connect("the hypervisor")
        await _init_dom0(xs)

        for module, name in (
            ("stubdom.host.backends.manager", "BackendManager"),
            ("stubdom.host.backends.console", "ConsoleBackend"),
        ):
            cls = _optional(module, name)
            if cls is not None:
                backend = cls(await connect(name), run_dir.root)
                await backend.start()
                stack.push_async_callback(_stopping(name, backend.stop))
                log.info("%s started", name)

        from stubdom.host.simulated import SimulatedHypervisor

        link = _link(run_dir, xs, xenstored_socket, trace)
        hypervisor = SimulatedHypervisor(xs, xenstored_socket, run_dir.root, link)
        stack.push_async_callback(_stopping("the hypervisor", hypervisor.close))

        server = ApiServer(
            hypervisor,
            run_dir.host_socket,
            xenstored_socket=xenstored_socket,
            xenstored=run_dir.xenstored_daemon(),
            run_dir=str(run_dir.root),
            on_shutdown=stop.set,
        )
        await server.start()
        stack.push_async_callback(server.close)
        write_pid(run_dir.host_pid, os.getpid())
        log.info("host daemon %d running in %s", os.getpid(), run_dir.root)

        await stop.wait()
        log.info("stopping: destroying every domain, stopping the backends")
        for client in clients:
            client.stop_reconnecting()  # a dead xenstored must not hold up the stop
    log.info("host daemon stopped")


async def _tracing_proxy(
    run_dir: RunDir, trace_file: str | None, stack: contextlib.AsyncExitStack
) -> TraceWriter | None:
    """dom0's socket as a tracing proxy in front of the real daemon's, when traced."""
    if trace_file is None:
        return None
    if run_dir.xenstored_daemon() == Daemon.OURS:
        raise ValueError(
            f"--trace {trace_file}: our xenstored traces itself; give it to 'stubdom host up'"
        )
    trace = TraceWriter(PacketTrace(open(trace_file, "a", encoding="utf-8")))  # noqa: SIM115
    stack.callback(trace.close)
    proxy = await TracingProxy.start(
        run_dir.xenstored_socket, run_dir.real_xenstored_socket, trace.domain(0)
    )
    stack.push_async_callback(proxy.close)
    return trace


def _link(
    run_dir: RunDir, xs: Client, xenstored_socket: str, trace: TraceWriter | None
) -> XenstoredLink:
    """How the hypervisor reaches the xenstored `stubdom.host.supervisor` started."""
    if run_dir.xenstored_daemon() == Daemon.OURS:
        return OursLink(xs, xenstored_socket)
    return RealLink(run_dir.real_xenstored_dir / "fake", xenstored_socket, trace)


def _stopping(what: str, stop: Any) -> Any:
    """Wrap a stop coroutine so one failing part does not keep the others running."""

    async def run() -> None:
        try:
            await stop()
        except Exception:
            log.exception("stopping %s failed", what)

    return run


def _remove(path: os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(run_dir: RunDir, trace_file: str | None = None) -> int:
    """The process entry point; logs go to ``DIR/host.log``.  Returns the exit status."""
    handler = logging.FileHandler(run_dir.host_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]  # stderr goes to host.log too: no duplicates
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        eventloop.run(serve(run_dir, trace_file))
    except Exception as e:
        log.exception("the host daemon failed")
        if sys.stderr.isatty():  # run by hand; under 'host up' stderr is host.log already
            print(
                f"stubdom host daemon: {type(e).__name__}: {e} (see {run_dir.host_log})",
                file=sys.stderr,
            )
        return 1
    return 0
