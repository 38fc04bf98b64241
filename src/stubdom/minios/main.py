"""``stubdom-minios``: the executable the simulated host boots as a stubdomain kernel.

argv is the kernel command line (``stubdomain_cmdline``): ``PROGRAM [ARG...]``, the
application the layer runs as Mini-OS runs ioemu.  Exit status: the application's
(0 is the domain shutting down, anything else a crash); 1 when the layer fails.
"""

from __future__ import annotations

import logging
import sys

from stubdom import eventloop
from stubdom.minios.layer import run_layer
from stubdom.stubdomain.consolelog import LINE_FORMAT


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LINE_FORMAT)
    return eventloop.run(run_layer(words))


if __name__ == "__main__":
    sys.exit(main())
