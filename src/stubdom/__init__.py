"""stubdom: the Xen toolstack <-> device-model stubdomain protocol, both sides of it,
the xenstore they talk through, and a simulated Xen host to run them on."""

__version__ = "0.1.0"
