"""What xenstored knows about a domain: introduction, target, shutdown, accounting.

A record exists for every domain the daemon has heard of: introduced ones, and (as cx
does) domains named in a permission vector while the hypervisor says they exist.  Its
``birth`` generation lets permission entries written before a domid was re-used be
ignored (XSA-322/XSA-417).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Domain:
    domid: int
    birth: int
    introduced: bool = False
    port: int = 0
    #: The guest this domain is device model for (SET_TARGET), if any.
    target: int | None = None
    #: How many stubdomains target this domain; each absorbs one RELEASE (cx quirk).
    target_refs: int = 0
    #: Set when the domain shuts down, cleared by RESUME: @releaseDomain fires once.
    shutdown: bool = False
    watches: int = 0
    #: Bytes of the domain's watches (paths and tokens), for the memory quota.
    watch_memory: int = 0
    transactions: int = 0
