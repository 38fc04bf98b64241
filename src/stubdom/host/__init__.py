"""The simulated Xen host: the hypervisor and dom0's backends, as ordinary processes.

Nothing here writes what libxl writes; that is `stubdom.toolstack`.  `hypervisor` is the
domctl-like interface a toolstack needs and `simulated` implements it with domains as
processes.  `xenbus` holds the device-handshake facts both sides share, `backends` are
dom0's device backends, `frontend` is the library a domain program uses to bring its
devices up, `hvmguest` plays an HVM guest's PV drivers, and `daemon`/`api` make it all a
background service that ``stubdom host`` starts and other commands reach.
"""
