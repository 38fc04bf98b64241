"""``--trace FILE``: one JSON line per packet in or out, for people and for tools."""

from __future__ import annotations

import json
import time
from typing import TextIO

from stubdom.wire.packet import Packet


class PacketTrace:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def record(self, direction: str, cid: int, domid: int, packet: Packet) -> None:
        self._stream.write(
            json.dumps(
                {
                    "t": round(time.time(), 6),
                    "dir": direction,
                    "conn": cid,
                    "dom": domid,
                    "type": packet.type_name,
                    "req_id": packet.req_id,
                    "tx_id": packet.tx_id,
                    "payload": packet.payload.decode("latin-1"),
                }
            )
            + "\n"
        )
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
