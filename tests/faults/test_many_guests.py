"""Many toolstack processes at once: every create succeeds and every destroy cleans up.

Each `stubdom create` adds children to /local/domain and /vm in its transactions, so
concurrent creates conflict; libxl retries such transactions for ever, and so do we
(for `RETRY_PATIENCE` seconds), with a random back-off between processes.

On every daemon: ox's transaction conflicts are the point (README, "On the real daemons").
"""

from __future__ import annotations

from tests.faults.host import GUARD, FaultHost, host
from tests.support.daemons import on_every_daemon

__all__ = ["host"]

GUESTS = 12


@on_every_daemon
def test_concurrent_creates_all_succeed_and_destroys_leave_nothing(host: FaultHost) -> None:
    configs = [host.config(f"g{i}") for i in range(GUESTS)]
    procs = [host.popen("create", str(c)) for c in configs]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=GUARD)
        if p.returncode != 0:
            errors.append(err)
    assert errors == []
    domains = host.domids()
    assert sorted(n for n in domains if n != "Domain-0") == sorted(
        [f"g{i}" for i in range(GUESTS)] + [f"g{i}-dm" for i in range(GUESTS)]
    )
    ids = tuple(d for n, d in domains.items() if n != "Domain-0")
    for domid in ids:
        assert host.domain_processes((domid,)) or domid in {
            domains[f"g{i}"] for i in range(GUESTS)  # HVM guests have no process
        }
    procs = [host.popen("destroy", f"g{i}") for i in range(GUESTS)]
    for p in procs:
        _, err = p.communicate(timeout=GUARD)
        assert p.returncode == 0, err
    host.assert_clean(*(f"g{i}" for i in range(GUESTS)), ids=ids)
