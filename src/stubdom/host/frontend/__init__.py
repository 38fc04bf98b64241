"""The library a domain program uses to bring its PV devices up (see `device`)."""

from stubdom.host.frontend.device import (
    Frontend,
    FrontendError,
    PciFunctionInfo,
    list_devices,
)

__all__ = ["Frontend", "FrontendError", "PciFunctionInfo", "list_devices"]
