"""Parsing, pairing, filters, protocol steps, SVG and a real browser, on a real trace."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from stubdom.cli import trace as _trace  # noqa: F401  (registers the verbs)
from stubdom.cli.main import cli
from stubdom.trace import load_trace, render_svg
from stubdom.trace.model import parse_lines
from stubdom.trace.protocol_steps import analyse
from stubdom.trace.timeline import Filter, filter_events, render_text
from tests.support.daemons import need_peer, short_tmpdir


def _line(t: float, d: str, conn: int, dom: int, typ: str, req: int, payload: str) -> str:
    return json.dumps(
        {
            "t": t,
            "dir": d,
            "conn": conn,
            "dom": dom,
            "type": typ,
            "req_id": req,
            "tx_id": 0,
            "payload": payload,
        }
    )


def test_pairing_by_connection_request_id_and_order() -> None:
    lines = [
        _line(1.0, "in", 1, 0, "WRITE", 7, "/a\0x"),
        _line(1.1, "in", 2, 3, "READ", 7, "device-model/1/state\0"),
        _line(1.2, "in", 1, 0, "READ", 7, "/b\0"),
        _line(1.3, "out", 2, 3, "READ", 7, "running"),
        _line(1.4, "out", 1, 0, "WRITE", 7, "OK\0"),
        _line(1.5, "out", 1, 0, "ERROR", 7, "ENOENT\0"),
        _line(1.6, "out", 1, 0, "WATCH_EVENT", 0, "/a\0tok\0"),
        "",
        "not json",
    ]
    ev = parse_lines(lines)
    assert [e.op for e in ev] == ["WRITE", "READ", "READ", "WATCH_EVENT"]
    w, r3, rb, we = ev
    assert (w.path, w.value, w.reply_type, w.ok) == ("/a", "x", "WRITE", True)
    assert r3.path == "/local/domain/3/device-model/1/state" and r3.reply == "running"
    assert rb.error == "ENOENT" and rb.reply_t == 1.5
    assert (we.kind, we.path, we.token) == ("event", "/a", "tok")


def test_real_trace_parses_and_pairs(real_trace: Path) -> None:
    ev = load_trace(real_trace)
    assert len(ev) > 500
    requests = [e for e in ev if e.kind != "event"]
    assert all(e.reply_type is not None for e in requests if e.op != "TRANSACTION_END")
    assert {e.dom for e in ev} >= {0, 2}


def test_filters(real_trace: Path) -> None:
    ev = load_trace(real_trace)
    only2 = filter_events(ev, Filter(domain=2))
    assert only2 and all(e.dom == 2 for e in only2)
    dm = filter_events(ev, Filter(path="/local/domain/2/device-model/"))
    assert dm and all((e.path or "").startswith("/local/domain/2/device-model/") for e in dm)
    start = min(e.t for e in ev)
    window = filter_events(ev, Filter(since=0.05, until=0.1))
    assert all(0.05 <= e.t - start <= 0.1 for e in window)
    assert len(window) < len(ev)
    text = render_text(ev, Filter(path="/local/domain/2/device-model/1/command"))
    assert "command = 'pci-ins'" in text and "== command: pci-ins" in text


def test_protocol_steps_of_a_real_run(real_trace: Path) -> None:
    a = analyse(load_trace(real_trace))
    assert a.stubdoms == {2: 1}
    labels = [s.label for s in a.steps]
    assert labels[:4] == [
        "setup: dmargs (18 args)",
        "setup: device-model-domid 2",
        "setup: dom2 is stubdom of dom1",
        "setup: device-model/1 dir",
    ]
    assert "dom2 running" in labels
    cmds = [s.label for s in a.steps if s.kind == "command"]
    assert cmds == ["command: pci-ins", "command: save", "command: continue"]
    results = [s.label for s in a.steps if s.kind == "result"]
    assert results == ["→ pci-inserted (pci-ins)", "→ paused (save)", "→ running (continue)"]
    assert any(s.label.startswith("parameter: 0000:03:00.0") for s in a.steps)
    assert any(s.label.startswith("→ parameter 0x") for s in a.steps)


@pytest.mark.parametrize("all_events", [False, True])
def test_svg_is_well_formed(real_trace: Path, tmp_path: Path, all_events: bool) -> None:
    out = tmp_path / "t.svg"
    render_svg(real_trace, out, all_events)
    root = ElementTree.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "xenstored" in texts and "stubdomain of dom1" in texts
    assert "command: pci-ins" in texts and "→ paused (save)" in texts
    lines = list(root.iter("{http://www.w3.org/2000/svg}line"))
    assert any(ln.get("stroke-dasharray") for ln in lines)  # watch events
    rows = len(lines)
    if all_events:
        assert "requests: " in texts and "watch events" in texts  # collapsed runs
    else:
        assert rows < 80  # readable at a glance


def test_cli_show_and_render(real_trace: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli,
        [
            "trace",
            "show",
            str(real_trace),
            "--domain",
            "2",
            "--path",
            "/local/domain/2/device-model",
            "--since",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "dom2#" in r.output and "dom0#" not in r.output
    out = tmp_path / "o.svg"
    r = CliRunner().invoke(cli, ["trace", "render", str(real_trace), "-o", str(out), "--all"])
    assert r.exit_code == 0, r.output
    ElementTree.parse(out)


def _png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixels of an 8-bit RGB(A) PNG (rows sampled)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            hdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", hdr[:10])
    assert depth == 8 and ctype in (2, 6)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 7 == 0:
            colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp * 5))
        prev = line
    return w, h, colours


@pytest.mark.peer
def test_chromium_renders_the_svg(real_trace: Path) -> None:
    need_peer(shutil.which("chromium") is not None, "chromium (Debian)")
    d = short_tmpdir("chromium-")
    svg, png = d / "trace.svg", d / "trace.png"
    render_svg(real_trace, svg)
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={d / 'profile'}",
            f"--screenshot={png}",
            "--window-size=1400,1000",
            svg.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = png.read_bytes()
    assert len(data) > 20_000
    w, h, colours = _png_pixels(data)
    assert (w, h) == (1400, 1000)
    assert len(colours) > 20  # text, lanes and coloured arrows, not a blank page
    assert bytes.fromhex("1f5fbf") in colours or len(colours) > 50
