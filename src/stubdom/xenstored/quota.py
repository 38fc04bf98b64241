"""Quotas with cxenstored 4.17 defaults, and the text CONTROL ``quota`` prints.

The quotas bind unprivileged domains only, except ``path-max``, which binds everyone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from stubdom.wire.constants import REL_PATH_MAX

# (CONTROL name, attribute, description) in the order cx prints them.
_TABLE: tuple[tuple[str, str, str], ...] = (
    ("nodes", "nodes", "Nodes per domain"),
    ("watches", "watches", "Watches per domain"),
    ("transactions", "transactions", "Transactions per domain"),
    ("outstanding", "outstanding", "Outstanding requests per domain"),
    ("transaction-nodes", "transaction_nodes", "Max. number of accessed nodes per transaction"),
    ("memory", "memory", "Total Xenstore memory per domain (error level)"),
    ("node-size", "node_size", "Max. size of a node"),
    ("path-max", "path_max", "Max. length of a node path"),
    ("permissions", "permissions", "Max. number of permissions per node"),
)


class QuotaError(ValueError):
    """An unknown quota name or a bad value."""


@dataclass
class Quotas:
    nodes: int = 1000
    watches: int = 128
    transactions: int = 10
    outstanding: int = 20
    transaction_nodes: int = 1024
    memory: int = 2621440
    node_size: int = 2048
    path_max: int = REL_PATH_MAX
    permissions: int = 5
    memory_soft: int = 2097152

    def set(self, name: str, value: int) -> None:
        """Set a quota by its CONTROL name (``transaction-nodes``...)."""
        for cname, attr, _ in _TABLE:
            if cname == name:
                if value < 0 or (attr == "path_max" and value > REL_PATH_MAX):
                    raise QuotaError(f"quota {name}: value {value} out of range")
                setattr(self, attr, value)
                return
        raise QuotaError(f"unknown quota {name!r}; known: {', '.join(n for n, _, _ in _TABLE)}")

    def report(self) -> str:
        lines = ["Quota settings:"]
        for cname, attr, desc in _TABLE:
            lines.append(f"{cname:<17}:{getattr(self, attr):>9} {desc}")
        return "\n".join(lines) + "\n"

    def soft_report(self) -> str:
        return (
            "Quota settings:\n"
            f"{'memory':<17}:{self.memory_soft:>9} "
            "Total Xenstore memory per domain (warning level)\n"
        )

    @staticmethod
    def names() -> list[str]:
        return [n for n, _, _ in _TABLE]


def _check_fields() -> None:  # keep the table and the dataclass in step
    attrs = {f.name for f in fields(Quotas)}
    assert all(attr in attrs for _, attr, _ in _TABLE)


_check_fields()
