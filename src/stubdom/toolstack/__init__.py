"""The toolstack side of the protocol: everything libxl writes and waits for.

xl.cfg, the domain records (`records`), device add and remove (`devices`), the
stubdomain spawner in libxl's order, the control channel, PCI hot-plug and
save/restore, on the `Hypervisor` interface of `stubdom.host`.
"""
