"""The toolstack side of the protocol: xl.cfg, the stubdomain spawner (libxl's order),
the control channel, PCI hot-plug and save/restore, on the `Hypervisor` interface."""
