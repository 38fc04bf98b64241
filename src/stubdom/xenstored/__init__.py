"""The embedded xenstored, faithful to cxenstored 4.17.

`core.XenStored` is the whole daemon as a sans-IO object: connections hand it packets
and collect the packets it queues for them.  `server` is the asyncio shell that owns
the sockets (the main dom0 socket and one ``PATH.d/<domid>`` socket per introduced
domain).
"""

from stubdom.xenstored.connection import Connection
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.quota import Quotas

__all__ = ["Connection", "Quotas", "XenStored"]
