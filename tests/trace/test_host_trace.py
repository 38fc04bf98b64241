"""`stubdom host up --trace FILE` hands the file to the xenstored it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stubdom.trace import load_trace
from tests.support.daemons import short_tmpdir

STUBDOM = str(Path(sys.executable).with_name("stubdom"))


def test_host_up_trace_records_the_hosts_traffic() -> None:
    d = short_tmpdir("hosttrace-")
    trace = d / "t.jsonl"
    subprocess.run(
        [STUBDOM, "host", "up", "--dir", str(d / "h"), "--trace", str(trace)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        events = load_trace(trace)
    finally:
        subprocess.run(
            [STUBDOM, "host", "down", "--dir", str(d / "h")],
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert any(e.op == "WRITE" and e.path == "/local/domain/0/name" for e in events)
    assert all(e.reply_type is not None for e in events if e.kind != "event")
