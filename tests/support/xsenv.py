"""An in-process xenstored and a dom0 client, for the host and toolstack tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir


@dataclass
class XsEnv:
    server: XenStoreServer
    dom0: Client
    run_dir: Path

    @property
    def socket(self) -> str:
        return str(self.server.socket_path)


@pytest.fixture
async def xsenv() -> AsyncIterator[XsEnv]:
    run_dir = short_tmpdir("host-")
    server = XenStoreServer(run_dir / "xs")
    await server.start()
    dom0 = await Client.connect(str(server.socket_path))
    yield XsEnv(server, dom0, run_dir)
    await dom0.close()
    await server.close()
