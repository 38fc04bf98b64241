"""Daemons of one kind, one per distinct command line, started lazily and reused."""

from __future__ import annotations

from types import TracebackType

from tests.differential.corpus import Case
from tests.differential.targets import Target, make_target


class Pool:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.targets: dict[tuple[str, ...], Target] = {}

    def get(self, case: Case) -> Target:
        key = case.daemon_args
        if key not in self.targets:
            self.targets[key] = make_target(self.kind, key)
        return self.targets[key]

    def close(self) -> None:
        for t in self.targets.values():
            t.stop()
        self.targets.clear()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
