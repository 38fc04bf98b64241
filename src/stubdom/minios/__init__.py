"""``stubdom-minios``: Mini-OS for a device model that speaks only the control channel.

On real Xen the stubdomain kernel is Mini-OS with ioemu linked in: Mini-OS brings up the
consoles and the PV devices (pcifront included, through every hot-plug), and ioemu only
speaks the device-model channel over xenstore.  This package is that Mini-OS for any
program: ``stubdomain_kernel = "stubdom-minios"`` and ``stubdomain_cmdline = "PROGRAM
[ARG...]"``.  The contract with the application:

* argv: ``[PROGRAM, ARG..., <dmargs words>]``, the words of ``<vm>/image/dmargs`` split
  as Mini-OS's ``main.c`` splits them (spaces; quotes group).
* environment: the domain's, plus ``XENSTORED_PATH`` (a proxy to the stubdomain's own
  xenstore connection), ``STUBDOM_DOMID``, ``STUBDOM_TARGET``, ``STUBDOM_SAVE_FILE`` and
  ``STUBDOM_RESTORE_FILE`` (FIFOs: consoles 1 and 2).
* console 0 carries the application's stdout and stderr.  A save is: write the stream
  to the save FIFO, close it, then write ``paused``; the proxy holds that write until
  console 1 has everything (`gate`, `relay`).  With ``-loadvm`` the restore FIFO yields
  console 2's stream; without it, end-of-file at once.
* consoles 3+ (the guest's serial ports) are left to the application: Mini-OS opens one
  only when qemu opens a pty, and an application may open them with
  `stubdom.host.frontend.console`.
* the application's exit is the domain's (0: shutdown; else, or a signal: crash); an
  error of the layer kills the application and crashes the domain.
"""
