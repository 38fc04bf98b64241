"""The simulated Xen host: the hypervisor and dom0's backends, as ordinary processes.

`hypervisor` is the domctl-like interface a toolstack needs; `simulated` implements it
with domains as processes.  `records` writes the xenstore trees libxl writes for a
domain, `xenbus` holds the device-handshake facts both sides share, `backends` and
`consoles` are dom0's device backends, `frontend` is the library a domain program
uses to bring its devices up, and `daemon`/`api` make it all a background service
that ``stubdom host`` starts and other commands reach.
"""
