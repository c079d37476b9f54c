"""What `watch` shows: a live terminal frame, plain lines, or JSON Lines, one per tick.

Theory of operation. Where the display writes decides its form:

* a terminal: one frame redrawn in place with ANSI cursor movement (no curses, so nothing to
  install and nothing to break on a dumb console), in colour unless NO_COLOR is set
  (https://no-color.org); TERM=dumb gets the plain lines below, since it cannot move the
  cursor either. The frame never scrolls: it drops its big digits when the terminal is too
  short or narrow for them, and below that it is one line redrawn in place. A terminal whose
  encoding cannot show the block digits and the state dot (LANG=C, latin-1) gets ASCII ones;
* anything else (a pipe, a file): one plain line per tick that starts with HH:MM:SS;
* `--json`: one JSON object per tick, the page's fields plus ISO datetimes.

Pure presentation: a `Frame` in, text out. It reads no page and opens no device, so the GUI
shares its lateness meter and its wording.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from .._defs import STATE_INITIALIZING, STATE_RUNNING, STATE_STOPPED, PageSnapshot
from .exits import printable
from .times import page_times


def snapshot_json(snap: PageSnapshot) -> dict[str, Any]:
    """The page's fields as JSON-ready values, plus the state's name and ISO datetimes."""
    data: dict[str, Any] = snap._asdict()
    data["instance_id"] = snap.instance_id.hex()
    data["state_name"] = snap.state_name
    times = page_times(snap)
    data["local_datetime"] = times.local_iso()
    data["system_datetime"] = times.utc_iso()
    return data


class LatenessMeter:
    """How late each tick was written, from the page alone.

    The driver's deadlines are its first write plus whole intervals (missed ones are skipped,
    never bunched), and the page holds the write's CLOCK_MONOTONIC time. So a tick's lateness is
    its write time past the grid `anchor + k * interval`. The anchor is exact once tick 1 was
    seen (a session that created the page always sees it); otherwise it is the most punctual
    write seen so far, which makes the figure a lower bound that tightens as ticks go by.
    """

    def __init__(self) -> None:
        self._instance: bytes | None = None
        self._phase = 0
        self._exact = False

    def measure(self, snap: PageSnapshot) -> int | None:
        """Lateness of `snap`'s write in ns; None when the page holds no tick of a running timer."""
        interval = snap.interval_ns
        if snap.state != STATE_RUNNING or interval <= 0 or snap.tick_count == 0:
            return None
        phase = snap.monotonic_ns % interval
        if snap.instance_id != self._instance:
            self._instance, self._phase, self._exact = snap.instance_id, phase, False
        if snap.tick_count == 1:
            self._phase, self._exact = phase, True
            return 0
        late = (phase - self._phase) % interval
        if not self._exact and late > interval // 2:  # earlier than the anchor: a better anchor
            self._phase = phase
            return 0
        return late


@dataclass
class Frame:
    """Everything one tick's display shows."""

    snap: PageSnapshot
    late_ns: int | None
    path: str
    private_pid: int | None
    notice: str = ""
    gone: bool = False  # the driver hung up without writing state=stopped


def describe_lateness(late_ns: int | None) -> str:
    if late_ns is None:
        return "late -"
    if late_ns < 1_000_000:
        return f"late {late_ns / 1000:.0f} us"
    return f"late {late_ns / 1e6:.1f} ms"


def describe_interval(interval_ns: int) -> str:
    if interval_ns % 1_000_000_000 == 0:
        return f"{interval_ns // 1_000_000_000} s"
    return f"{interval_ns / 1e6:g} ms"


def plain_line(frame: Frame) -> str:
    """One line per tick for pipes and files: HH:MM:SS first, so `cut -c1-8` gives the time."""
    snap = frame.snap
    return (
        f"{page_times(snap).local:%H:%M:%S}  tick {snap.tick_count}  {describe_lateness(frame.late_ns)}  "
        f"{snap.state_name}  pid {snap.writer_pid}  instance {snap.instance_id.hex()[:8]}"
    )


class Display:
    """Where frames go. The base class writes plain lines; notices go to stderr, one line each,
    so stdout stays one line per tick for the programs that read it."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def show(self, frame: Frame) -> None:
        print(plain_line(frame), file=self.out, flush=True)

    def notice(self, text: str, frame: Frame | None) -> None:
        print(f"sharingmemory: {printable(text)}", file=self.err, flush=True)

    def instance_changed(self, text: str) -> None:
        """A new driver serves the path (`watch --follow`). A line display says it on stderr at
        once, since its stdout is one line per tick; the live frame shows it in the frame."""
        self.notice(text, None)

    def show_last(self, frame: Frame) -> None:
        """The frame of a driver that stopped or hung up. A line display shows nothing more:
        the one-line error that ends the watch says it; the live frame shows it in red."""

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class JsonDisplay(Display):
    """One JSON object per tick on stdout (JSON Lines)."""

    def show(self, frame: Frame) -> None:
        data = snapshot_json(frame.snap)
        data["late_ns"] = frame.late_ns
        print(json.dumps(data), file=self.out, flush=True)


# Big digits, five rows of three "pixels"; each pixel is drawn two cells wide so it looks square.
_FONT: Final = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    ":": (".", "#", ".", "#", "."),
}


def big_text(text: str, *, block: str = "██") -> list[str]:
    """`text` (digits and colons) as five rows of `block` pixels (two cells wide)."""
    rows = []
    for row in range(5):
        glyphs = ["".join(block if pixel == "#" else "  " for pixel in _FONT[char][row]) for char in text]
        rows.append("  ".join(glyphs))
    return rows


# Select Graphic Rendition codes (ECMA-48).
_RESET: Final = "\x1b[0m"
_BOLD: Final = "1"
_DIM: Final = "2"
_RED: Final = "31"
_GREEN: Final = "32"
_YELLOW: Final = "33"
_CYAN: Final = "36"
_STATE_COLOURS: Final = {STATE_RUNNING: _GREEN, STATE_INITIALIZING: _YELLOW, STATE_STOPPED: _RED}


#: Below this many columns the frame's labels leave no room for values: one line instead.
_MIN_FRAME_WIDTH: Final = 30

#: The glyphs a Unicode terminal gets, and what one that cannot encode them gets instead.
_UNICODE_GLYPHS: Final = ("██", "●")
_ASCII_GLYPHS: Final = ("##", "*")


def can_encode(out: TextIO, text: str) -> bool:
    """Whether `out`'s encoding can write `text` (False for ascii, latin-1, an unknown codec)."""
    try:
        text.encode(getattr(out, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class TerminalDisplay(Display):
    """A frame redrawn in place: the cursor goes back up over the last frame, the new one is
    written over it line by line and the rest of the screen below is cleared, in one write, so
    nothing flickers. The cursor is hidden while it runs and shown again on exit.

    The frame must fit the terminal, or each redraw scrolls and leaves a copy behind: a frame
    of N lines ends with its cursor on line N + 1, so it needs N + 1 rows. Too few rows for the
    full frame gives the compact one (one-line clock, no blank rows); too few for that gives a
    single line redrawn with a carriage return."""

    def __init__(self, out: TextIO, err: TextIO, *, colour: bool, ascii_only: bool = False) -> None:
        super().__init__(out, err)
        self.colour = colour
        self.block, self.dot = _ASCII_GLYPHS if ascii_only else _UNICODE_GLYPHS
        self._drawn = 0
        self._inline = False  # the last drawing was the one-line form, cursor at its end
        self._last: Frame | None = None

    def __enter__(self) -> TerminalDisplay:
        self.out.write("\x1b[?25l")
        self.out.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.out.write((_RESET if self.colour else "") + "\x1b[?25h" + ("\n" if self._inline else ""))
            self.out.flush()

    def show(self, frame: Frame) -> None:
        self._last = frame
        size = shutil.get_terminal_size()
        lines = self.render(frame, size.columns, size.lines)
        if len(lines) == 1:
            self._draw_inline(lines[0])
        else:
            self._draw(lines)

    def instance_changed(self, text: str) -> None:
        pass  # the frame's notice row says it (Frame.notice), for a few ticks

    def show_last(self, frame: Frame) -> None:
        self.show(frame)

    def notice(self, text: str, frame: Frame | None) -> None:
        frame = frame or self._last
        if frame is None:
            super().notice(text, None)
            return
        frame.notice = text
        self.show(frame)

    def _paint(self, text: str, *codes: str) -> str:
        if not self.colour or not codes:
            return text
        return f"\x1b[{';'.join(codes)}m{text}{_RESET}"

    def render(self, frame: Frame, width: int, height: int = 24) -> list[str]:
        """The frame's lines for a `width` x `height` terminal, each cut to `width` - 1 columns
        so none wraps (a wrapped line would throw the cursor arithmetic of the next redraw
        off), and at most `height` - 1 of them; one line when not even the compact frame fits."""
        if width > _MIN_FRAME_WIDTH:
            full = self._render(frame, width, compact=False)
            if len(full) < height:
                return full
            compact = self._render(frame, width, compact=True)
            if len(compact) < height:
                return compact
        return [self._one_line(frame, width)]

    def _one_line(self, frame: Frame, width: int) -> str:
        snap = frame.snap
        state = "gone" if frame.gone else snap.state_name
        # Most telling first, since a narrow terminal cuts the end: the time, the tick, the state.
        clock = f"{page_times(snap).local:%H:%M:%S}"
        text = f"{clock}  tick {snap.tick_count}  {state}  {describe_lateness(frame.late_ns)}"
        if frame.notice:
            text += f"  {frame.notice}"
        return self._cut(text, width - 1, ())

    def _render(self, frame: Frame, width: int, *, compact: bool) -> list[str]:
        snap = frame.snap
        times = page_times(snap)
        local = times.local
        limit = width - 1
        state = "gone" if frame.gone else snap.state_name
        state_colour = _RED if frame.gone else _STATE_COLOURS.get(snap.state, _YELLOW)
        late_colour = _GREEN
        if frame.late_ns is None or frame.late_ns >= 100_000_000:
            late_colour = _RED if frame.late_ns is not None else _DIM
        elif frame.late_ns >= 5_000_000:
            late_colour = _YELLOW
        where = frame.path + (f"  (private driver, pid {frame.private_pid})" if frame.private_pid else "")
        gap: list[tuple[str, tuple[str, ...]]] = [] if compact else [("", ())]
        rows: list[tuple[str, tuple[str, ...]]] = [(f" Kernel Timer  {where}", (_DIM,)), *gap]
        clock = local.strftime("%H:%M:%S")
        big = big_text(clock, block=self.block)
        clock_colour = (_DIM,) if state != "running" else (_BOLD, _CYAN)
        if not compact and len(big[0]) + 2 <= limit:
            rows += [(f"  {line}", clock_colour) for line in big]
        else:
            rows.append((f"  {clock}", clock_colour))
        rows += [
            *gap,
            (f"  {local:%A %d %B %Y}   {times.offset_text}", (_BOLD,)),
            (f"  UTC      {times.utc:%H:%M:%S}", ()),
        ]
        lines = [self._cut(text, limit, codes) for text, codes in rows]
        tick = f"{snap.tick_count:<8} every {describe_interval(snap.interval_ns)}   "
        lines.append(
            self._cut_segments(limit, ("  tick     " + tick, ()), (describe_lateness(frame.late_ns), (late_colour,)))
        )
        lines.append(
            self._cut_segments(
                limit,
                ("  driver   ", ()),
                (f"{self.dot} {state}", (state_colour, _BOLD)),
                (f"   pid {snap.writer_pid}   instance {snap.instance_id.hex()}", ()),
            )
        )
        lines.append(self._cut(f"  {frame.notice}", limit, (_YELLOW, _BOLD)) if frame.notice else "")
        lines.append(self._cut("  Ctrl-C quits", limit, (_DIM,)))
        return lines

    def _cut(self, text: str, limit: int, codes: tuple[str, ...]) -> str:
        return self._paint(printable(text)[: max(limit, 0)], *codes)

    def _cut_segments(self, limit: int, *segments: tuple[str, tuple[str, ...]]) -> str:
        """Differently painted pieces of one line, cut together to `limit` visible columns (the
        escape codes take none)."""
        parts = []
        for text, codes in segments:
            parts.append(self._cut(text, limit, codes))
            limit -= len(printable(text))
        return "".join(parts)

    def _draw(self, lines: list[str]) -> None:
        up = f"\x1b[{self._drawn}F" if self._drawn else "\r"
        body = "".join(f"{line}\x1b[K\n" for line in lines)
        self.out.write(f"{up}{body}\x1b[J")
        self.out.flush()
        self._drawn = len(lines)
        self._inline = False

    def _draw_inline(self, line: str) -> None:
        """The one-line form: back to the frame's first line (or this line's start), the line,
        and everything below cleared; no newline, so the next one overwrites it."""
        up = f"\x1b[{self._drawn}F" if self._drawn else "\r"
        self.out.write(f"{up}{line}\x1b[K\x1b[J")
        self.out.flush()
        self._drawn = 0
        self._inline = True


def wants_colour(environ: Mapping[str, str]) -> bool:
    """Colour unless NO_COLOR is set to anything non-empty (no-color.org) or TERM is dumb."""
    return not environ.get("NO_COLOR") and environ.get("TERM", "") != "dumb"


def choose_display(out: TextIO, err: TextIO, *, as_json: bool) -> Display:
    """JSON if asked; the live frame on a terminal that can move its cursor; plain lines else."""
    if as_json:
        return JsonDisplay(out, err)
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal and os.environ.get("TERM", "") not in ("", "dumb"):
        ascii_only = not can_encode(out, "".join(_UNICODE_GLYPHS))
        return TerminalDisplay(out, err, colour=wants_colour(os.environ), ascii_only=ascii_only)
    return Display(out, err)
