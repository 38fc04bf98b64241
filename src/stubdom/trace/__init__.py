"""Reading ``stubdom xenstored --trace`` files: events, timelines, protocol steps, SVG."""

from stubdom.trace.model import Event, load_trace
from stubdom.trace.svg import render_svg

__all__ = ["Event", "load_trace", "render_svg"]
