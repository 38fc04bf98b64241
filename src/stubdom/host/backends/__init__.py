"""dom0's device backends: vbd, vif, vfb, vkbd and pci, driven by `BackendManager`.

`generic` holds what every kind shares (the device handle, the driver hooks), one
module per kind says what its Linux or qemu backend publishes, and `manager` runs the
xenbus handshake for every device directory under ``/local/domain/0/backend``.
Consoles have their own backend (`stubdom.host.backends.console`).
"""

from stubdom.host.backends.generic import BackendDevice, BackendDriver, SetupFailed
from stubdom.host.backends.manager import BackendManager, default_drivers

__all__ = ["BackendDevice", "BackendDriver", "BackendManager", "SetupFailed", "default_drivers"]
