"""Running the kit's steps so that no peer can stop the report.

A peer under test may crash, hang, say nothing or answer garbage, and the kit's own
code may fail on what it is given.  Each step therefore runs under its own time
budget and under the run's global deadline, and any error it raises decides its
undecided clauses as failed with a one-line reason; a step whose peer is already dead
is not run, its clauses fail with how the peer ended.  Whatever happens, every clause
gets a verdict (`Ledger.close`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from stubdom.conformance.report import Ledger

log = logging.getLogger(__name__)

#: The reason of the clauses the run's global deadline left unreached.
TIME_BOUND = "not reached (time bound)"


@dataclass(frozen=True)
class Step:
    """Clauses decided together by one body, which has ``budget`` seconds."""

    name: str
    clauses: Sequence[str]
    budget: float
    body: Callable[[], Awaitable[None]]
    #: Whether the body needs the peer alive (a judge of the trace does not).
    needs_peer: bool = True


class StepRunner:
    """Runs steps in order against a ledger until the run's deadline.

    ``peer_gone`` says why the peer cannot go on (None while it can); it is asked
    before each step that needs the peer."""

    def __init__(
        self,
        ledger: Ledger,
        bound: float,
        peer_gone: Callable[[], Awaitable[str | None]],
    ) -> None:
        self.ledger = ledger
        self.bound = bound
        self.peer_gone = peer_gone
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + bound
        #: Set once the peer is known gone: the reason of every later peer step.
        self.gone: str | None = None

    def remaining(self) -> float:
        return self._deadline - asyncio.get_running_loop().time()

    async def run(self, step: Step) -> None:
        todo = self.ledger.undecided(step.clauses)
        if not todo:
            return
        if step.needs_peer and self.remaining() > 0 and self.gone is None:
            self.gone = await self._ask_gone()
        if step.needs_peer and self.gone is not None:
            self.ledger.fail(todo, f"not run: {self.gone}")
            return
        left = self.remaining()
        if left <= 0 and step.needs_peer:
            self.ledger.ended = "time bound"
            self.ledger.fail(todo, f"{TIME_BOUND}: the run's {self.bound:g} s were used up")
            return
        await self._run_body(step, max(0.0, min(step.budget, left)) if step.needs_peer else None)

    async def _run_body(self, step: Step, limit: float | None) -> None:
        cm = asyncio.timeout(limit)
        try:
            async with cm:
                await step.body()
        except TimeoutError as e:
            if limit is not None and cm.expired():
                if self.remaining() <= 0:
                    self.ledger.ended = "time bound"
                    why = f"{TIME_BOUND}: the run's {self.bound:g} s were used up"
                else:
                    why = f"step {step.name!r} took longer than its {limit:g} s"
                self.ledger.fail(step.clauses, why)
            else:
                error = f"{type(e).__name__}: {e}"
                self.ledger.fail(step.clauses, await self._blame(step, error))
        except Exception as e:  # the peer's garbage or the kit's own bug
            log.debug("step %s failed", step.name, exc_info=True)
            self.ledger.fail(step.clauses, await self._blame(step, _explain(step.name, e)))

    async def _blame(self, step: Step, error: str) -> str:
        """A failed step's reason: the peer's death if it died, else the error."""
        if not step.needs_peer or self.gone is not None:
            return error
        self.gone = await self._ask_gone()
        return f"{self.gone} (in step {step.name!r})" if self.gone else error

    async def _ask_gone(self) -> str | None:
        try:
            async with asyncio.timeout(max(0.1, min(2.0, self.remaining()))):
                return await self.peer_gone()
        except Exception:  # asking must not end the run either: assume it runs
            log.debug("could not tell whether the stubdomain runs", exc_info=True)
            return None


def _explain(step: str, e: Exception) -> str:
    """One line for a failed step: the error as the peer's fault when it is a protocol
    or I/O error, else as an error of the kit's step (still a verdict, not a crash)."""
    from stubdom.host.hypervisor import HypervisorError
    from stubdom.toolstack.devices import DeviceError
    from stubdom.toolstack.exchange import DeviceModelError
    from stubdom.toolstack.session import ToolstackError
    from stubdom.toolstack.spawn import CreateError
    from stubdom.xenstore import XenStoreError

    peer_faults = (DeviceModelError, DeviceError, CreateError, ToolstackError,
                   HypervisorError, XenStoreError, OSError, ValueError)
    text = str(e) or "(no message)"
    if isinstance(e, peer_faults):
        return f"{type(e).__name__}: {text}"
    return f"the kit's step {step!r} failed on what the stubdomain did: {type(e).__name__}: {text}"
