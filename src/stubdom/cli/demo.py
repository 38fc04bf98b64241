"""``stubdom demo``: the whole toolstack <-> stubdomain story on a host of its own."""

from __future__ import annotations

from pathlib import Path

import click

from stubdom import eventloop


@click.command("demo")
@click.option("--backend", type=click.Choice(["sim", "qemu"]), default="sim", show_default=True,
              help="The device model in the stubdomain: the pure-Python machine or QEMU.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="demo-output",
              show_default=True, help="Output directory: host run directory, save "
              "file, trace and picture. Nothing is left outside it.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Guest config (default: examples/demo.cfg).")
@click.option("--xenstored", type=click.Choice(["ours", "cx", "ox"]), default="ours",
              show_default=True,
              help="The host's xenstored: ours, or Xen 4.17's cxenstored (cx) or oxenstored "
              "(ox) (Debian packages xen-utils-4.17 and gcc).")
def demo(backend: str, out: str, config: str | None, xenstored: str) -> None:
    """Host up, create with a stubdomain, PCI hot-plug, save, restore, destroy, host down."""
    from stubdom.demo import DemoError, run_demo
    from stubdom.toolstack.xlcfg import ConfigError

    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(
            f"cannot create the output directory {out}: {e.strerror or e}; choose another --out"
        ) from None
    try:
        eventloop.run(run_demo(Path(out), backend, Path(config) if config else None,
                             echo=click.echo, xenstored=xenstored))
    except (DemoError, ConfigError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename or out}: {e.strerror or e}") from None
