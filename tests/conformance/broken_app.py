"""The channel-only qemu-trad device model (``stubdom-qemu-trad-dm``,
`stubdom.minios.qemu_trad_dm`) with one defect, as an application of the Mini-OS layer:
``broken_app.py VARIANT [argv words...]``.

The defects of `broken_dm` (our agent as a whole kernel) and some of `faulty_stub`:

keep-command      never deletes ``command``
state-first       writes ``state`` before ``parameter`` (pci-ins)
never-running     never writes ``running``
paused-early      writes ``paused`` before the saved state
truncated-save    saves half of the stream
crash-on-pci-ins  exits with status 134 on pci-ins
silent            deletes every command and answers none
garbage-state     answers every command with garbage in ``state``
"""

from __future__ import annotations

import os
import sys
from typing import Any

from stubdom.minios import qemu_trad_dm as qt
from stubdom.protocol import State

Dm = qt.Dm
VARIANTS = ("keep-command", "state-first", "never-running", "paused-early",
            "truncated-save", "crash-on-pci-ins", "silent", "garbage-state")


class _Deferring:
    """An xs that holds back a ``0x..`` parameter until after the next write."""

    def __init__(self, xs: Any) -> None:
        self.xs = xs
        self.held: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.xs, name)

    async def write(self, path: str, value: Any, *a: Any, **k: Any) -> None:
        if path.endswith("/parameter") and str(value).startswith("0x"):
            self.held.append((path, value))
            return
        await self.xs.write(path, value, *a, **k)
        for p, v in self.held:
            await self.xs.write(p, v)
        self.held.clear()


def _channel_faults(variant: str) -> None:
    orig_event, orig_ins = Dm.command_event, Dm.pci_ins

    async def command_event(self: Any) -> None:
        raw = await self.xs.read_optional(self.rel("command"))
        if raw is None:
            # The original would read again, and could take a command written in
            # between without its defect; that write's own event comes next.
            return
        if variant == "keep-command":
            self.xs.rm = _no_command_rm(self.xs.rm)
            await orig_event(self)
            return
        if variant == "crash-on-pci-ins" and raw == b"pci-ins":
            qt.say("fault: crashing on pci-ins")
            os._exit(134)
        if variant in ("silent", "garbage-state"):
            await self.xs.rm(self.rel("command"))
            if variant == "garbage-state":
                await self.xs.write(self.rel("state"), b"\xff\x00 not a state")
            return
        await orig_event(self)

    async def pci_ins(self: Any, parameter: str) -> None:
        real, self.xs = self.xs, _Deferring(self.xs)
        try:
            await orig_ins(self, parameter)
        finally:
            self.xs = real

    Dm.command_event = command_event  # type: ignore[method-assign]
    if variant == "state-first":
        Dm.pci_ins = pci_ins  # type: ignore[method-assign]


def _no_command_rm(rm: Any) -> Any:
    async def patched(path: str, *a: Any, **k: Any) -> None:
        if not path.endswith("/command"):
            await rm(path, *a, **k)

    return patched


def _state_faults(variant: str) -> None:
    orig_set, orig_save = Dm.set_state, Dm.save

    async def set_state(self: Any, state: State) -> None:
        if variant == "never-running" and state is State.RUNNING:
            return
        await orig_set(self, state)

    async def save(self: Any) -> None:
        if variant == "paused-early":
            await orig_set(self, State.PAUSED)
            self.set_state = _skip_paused(self.set_state)
        await orig_save(self)

    Dm.set_state = set_state  # type: ignore[method-assign]
    Dm.save = save  # type: ignore[method-assign]
    if variant == "truncated-save":
        real = qt.savevm_stream
        # Cut at half, then back to a non-zero byte: a qemu-trad stream has no section
        # lengths, so a cut that happens to end in a zero byte (the EOF marker's value,
        # common in device state) is indistinguishable from a complete stream.
        qt.savevm_stream = lambda sections: (
            lambda s: s[: len(s) // 2].rstrip(b"\0"))(real(sections))


def _skip_paused(set_state: Any) -> Any:
    async def patched(state: State) -> None:
        if state is not State.PAUSED:
            await set_state(state)

    return patched


def main() -> int:
    variant, *words = sys.argv[1:]
    if variant not in VARIANTS:
        print(f"broken_app: unknown variant {variant!r}; one of {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    _channel_faults(variant)
    _state_faults(variant)
    sys.argv = [sys.argv[0], *words]
    return qt.main()


if __name__ == "__main__":
    sys.exit(main())
