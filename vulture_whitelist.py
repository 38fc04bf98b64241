# ruff: noqa: B018
"""Names vulture (``make lint``) reports as unused that are used: by tests only, by a
framework, by Python itself, or as a record of a protocol.  One line each, with why.

Vulture matches names, not objects: ``_.name`` marks every definition called ``name``
used.  Click commands are not listed: ``ignore_decorators`` in pyproject.toml skips them.
"""

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# -- called by a framework or by Python -------------------------------------------------
_.connection_made  # asyncio.Protocol callback (transports, xenstored, console frontend)
_.connection_lost  # asyncio.Protocol callback
_.eof_received  # asyncio.Protocol callback
_.data_received  # asyncio.Protocol callback
_.get_buffer  # asyncio.BufferedProtocol callback (the client's stream transport)
_.buffer_updated  # asyncio.BufferedProtocol callback
_.pause_writing  # asyncio.Protocol flow-control callback
_.resume_writing  # asyncio.Protocol flow-control callback
_.convert  # click.ParamType hook, called by click for each option value
_.get_command  # click.Group hook: the root group loads a verb there (stubdom.cli.main)
_.format_commands  # click.Group hook: --help lists the verbs without loading them
_.fallback  # click option -F of shutdown/reboot: accepted for xl compatibility, ignored
_.rebind  # click option -r of pci-assignable-remove: accepted for xl compatibility, ignored
_.__cause__  # exception chaining, read by Python when the traceback is printed
_.__getattr__  # a module's lazy attributes (PEP 562: stubdom.realxs), called by Python

# -- dataclass fields and enum members, written to or read from data --------------------
_.device_model_version  # GuestConfig field: kept in the saved config, checked by configure
_.device_model_stubdomain_override  # GuestConfig field: kept in the saved config
_.nographic  # GuestConfig field: xl.cfg nographic=, kept in the saved config (dmargs needs no more than VNC and SDL)
_.VIF  # NicType member: parsed from xl.cfg ``type=vif``
_.STRICT  # RdmPolicy member: parsed from xl.cfg ``rdm_policy=strict``
_.RESTRICT  # wire message type 20: known so that daemons answer it ENOSYS
_.net_none  # Options field: ``-net none`` parsed from the DM's argv (tests read it)
_.vkbd  # Discovered field: the vkbd frontend found (tests read it)
_.reply_t  # trace Event field: when the reply came (tests read it)
_.valid  # journal Scan field: bytes of whole records (tests read it)
_.RESULT_STATE  # protocol table: the state each command waits for (tests check it)

# -- API used by tests only -------------------------------------------------------------
_.load_verbs  # stubdom.cli.main: the whole command tree, for the CLI sweep tests
_.pending_out  # RingEnd: bytes on the ring the peer has not taken; the ring property tests check it
_.decode_state  # stream: the payload as bytes (src uses views)
_.is_complete  # stream: a whole, intact stream?
_.encode_save_image  # savefile: the file in memory (src frames the state: encode_save_image_frame)
_.decode_save_image  # savefile: the file in memory (src locates the state: locate_save_image)
_.format_xlcfg  # xlcfg: the inverse of the parser, for its round-trip tests
_.platform_device_model_path  # protocol: the guest's platform/device-model node
_.console_frontend_path  # console backend: where the frontend of console N lives
_.readexactly  # console frontends: a read of exactly N bytes
_.closed_by_backend  # frontend device: whether the backend, not we, closed it
_.sector_size  # vbd frontend: the backend's sector size
_.physical_to_virtual  # pci frontend: where a host function shows up (Mini-OS's)
_.pending_bytes  # the gate's and the packet reader's buffered bytes
_.sessions  # minios relay: how many sessions it has relayed
_.layout  # sim device model: its PCI functions
_.filter_events  # trace timeline: the events a Filter keeps
_.validate_type  # wire: the Op for a type number, UnknownType past 4.17's
_.next_packet  # wire: the packet reader's next whole packet
_.receive_data  # xenstore ClientProtocol: bytes in, events queued (src takes them with receive)
_.letter  # wire perms: a permission's access as its letter
_.guest_uuid  # spawn.Created: the guest's uuid, for a caller that did not choose it
_.notify_fifo  # realxs FakeXen: a domain's notify FIFO (the host's ring transport; tests)
_.kick_virq  # realxs FakeXen: re-check domains after a marker (tests/differential, tests)
_.unmark  # realxs FakeXen: a marked domain runs again (tests)
_.DEAD  # realxs DomainState member: the marker dead-<domid>, named by value in tests
# logging's module switches (stubdomain/main.py quiet_log_records), read by logging
_._srcfile
_.logThreads
_.logProcesses
_.logMultiprocessing
