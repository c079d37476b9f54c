"""`sharingmemory gui`: the seed's "Kernel Timer" dialog, as a small Tk window.

Theory of operation. The window belongs to one session (`_session.open_session`): the device, or
a private driver started for it when none runs at the default path. Everything happens on Tk's
event loop, and only there: after each tick the next update is scheduled with `after()` for just
past the deadline the page announces (`monotonic_ns + interval_ns`), so the window reads the page
once per tick and never polls beside the writer; no thread touches Tk. If the tick is not in the
page at its deadline, the page is read again in short steps, and a driver silent for three
intervals and a second is asked for its status, which fails when it died.

The window closes with its Close button, Esc, Ctrl-Q (either case, so Caps Lock does not get
in the way) or the window manager's close box, all through `close`. Closing the window closes
the handle (CLEANUP and CLOSE, as the seed's program closes its handle
on exit) before the window is destroyed; a driver that stops is said in the window, in red, and
the window stays until it is closed.

tkinter is imported only when the window opens, so the rest of the package works on a Python
built without it; then `GuiUnavailable` carries the one line to show.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .._client import next_deadline_delay, retry_step
from .._defs import STATE_RUNNING, STATE_STOPPED, NtStatusError, PageSnapshot
from .display import LatenessMeter, describe_interval, describe_lateness
from .exits import EXIT_OK, CommandError
from .options import add_client_options, add_private_driver_options, parse_positive
from .session import Session, open_session, patience
from .times import PageTimeError, page_times

if TYPE_CHECKING:
    import tkinter as tk

log = logging.getLogger("sharingmemory.gui")

TITLE: Final = "Kernel Timer"
_BACKGROUND: Final = "#1d2127"
_PANEL: Final = "#262b33"
_TEXT: Final = "#e6e9ef"
_MUTED: Final = "#8d96a5"
_CLOCK: Final = "#7fd1e6"
_GREEN: Final = "#7ccf7a"
_RED: Final = "#ef6b73"
_YELLOW: Final = "#e5c07b"
_BUTTON: Final = "#3b4452"
_VALUE_WIDTH: Final = 380  # pixels


class GuiUnavailable(Exception):  # noqa: N818 - named after its cause, like the statuses of _status
    """No window can be shown: tkinter is missing from this Python, or there is no display."""


@dataclass
class GuiOptions:
    """`gui`'s command line: the device, the private driver's period, and an optional tick count
    after which the window closes by itself (for demonstrations and tests)."""

    socket: str | None = None
    timeout: float = 5.0
    interval: str = "1s"
    count: int | None = None
    quiet: bool = False  # -q: no notice of a private driver started for the window


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gui = commands.add_parser("gui", help="the Kernel Timer window: the local time from the shared page at each tick")
    add_client_options(gui)
    gui.add_argument("--count", type=parse_positive, metavar="N", help="close the window by itself after N ticks")
    add_private_driver_options(gui)
    gui.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        options = GuiOptions(args.socket, args.timeout, args.interval, args.count, quiet=args.quiet)
        run_gui(options)
    except GuiUnavailable as err:
        raise CommandError(str(err)) from err
    return EXIT_OK


def run_gui(options: GuiOptions) -> None:
    """Show the window until it is closed (or `count` ticks were shown).

    Raises GuiUnavailable without tkinter or a display, before any driver is started; the
    device's errors (DeviceNotFound, AccessDenied) as `open_session` raises them.
    """
    try:
        import tkinter as tk
    except ImportError as err:
        raise GuiUnavailable(
            f"tkinter is not available to this Python ({sys.executable}); "
            "install it (Debian: apt-get install python3-tk) or use `sharingmemory watch`"
        ) from err
    try:
        root = tk.Tk(className="sharingmemory")
    except tk.TclError as err:
        raise GuiUnavailable(f"cannot open a window: {err}") from err
    try:
        root.title(TITLE)
        with open_session(
            options.socket,
            timeout=options.timeout,
            interval=options.interval,
            private_ok=True,
            announce=None if options.quiet else sys.stderr,
        ) as session:
            window = KernelTimerWindow(root, session, count=options.count)
            window.start()
            root.mainloop()
            window.close()
    finally:
        with contextlib.suppress(tk.TclError):  # already destroyed by the window's close
            root.destroy()


class KernelTimerWindow:
    """The widgets of the window and the updates scheduled on Tk's loop; owns no resource but the
    pending `after` callback, and closes the session's handle when the window closes."""

    def __init__(self, root: tk.Tk, session: Session, *, count: int | None = None) -> None:
        import tkinter as tk
        from tkinter import font as tkfont

        self.root = root
        self.session = session
        self.count = count
        self.shown = 0
        self.meter = LatenessMeter()
        self._after: str | None = None
        self._last_tick = -1
        self._last_news = time.monotonic()
        self._closed = False

        fixed = tkfont.nametofont("TkFixedFont").actual("family")
        plain = tkfont.nametofont("TkDefaultFont").actual("family")
        root.configure(background=_BACKGROUND, padx=18, pady=14)
        root.resizable(width=False, height=False)
        root.protocol("WM_DELETE_WINDOW", lambda: self.close("the window manager"))
        for sequence, name in (("<Escape>", "Esc"), ("<Control-q>", "Ctrl-Q"), ("<Control-Q>", "Ctrl-Q")):
            root.bind(sequence, self._closer(name))

        def label(parent: tk.Misc, size: int, colour: str, weight: str = "normal", family: str = plain) -> tk.Label:
            return tk.Label(
                parent, font=(family, size, weight), fg=colour, bg=str(parent.cget("background")), anchor="w"
            )

        self.clock = label(root, 60, _CLOCK, "bold", fixed)
        self.clock.configure(text="--:--:--", anchor="center")
        self.clock.pack(fill="x")
        self.date = label(root, 13, _TEXT)
        self.date.configure(anchor="center")
        self.date.pack(fill="x", pady=(0, 12))

        panel = tk.Frame(root, background=_PANEL, padx=14, pady=10)
        panel.pack(fill="x")
        self.values: dict[str, tk.Label] = {}
        for row, name in enumerate(("Driver", "Instance", "Tick", "UTC", "Handle", "Device")):
            name_label = label(panel, 11, _MUTED)
            name_label.configure(text=name)
            name_label.grid(row=row, column=0, sticky="w", padx=(0, 14), pady=1)
            value = label(panel, 11, _TEXT, family=fixed if name in ("Instance", "Device") else plain)
            value.configure(wraplength=_VALUE_WIDTH, justify="left")  # a long socket path wraps, not widens
            value.grid(row=row, column=1, sticky="w", pady=1)
            self.values[name] = value

        # The banner and the button share the bottom row, so the window stays one row shorter.
        bottom = tk.Frame(root, background=_BACKGROUND)
        bottom.pack(fill="x", pady=(10, 0))
        self.banner = label(bottom, 12, _RED, "bold")
        self.banner.configure(wraplength=_VALUE_WIDTH, justify="left")
        self.banner.pack(side="left", fill="x", expand=True)
        self.close_button = tk.Button(
            bottom, text="Close", command=lambda: self.close("the Close button"), font=(plain, 11),
            bg=_BUTTON, fg=_TEXT, activebackground=_PANEL, activeforeground=_TEXT,
            relief="flat", highlightthickness=0, borderwidth=0, padx=18, pady=4,
        )  # fmt: skip
        self.close_button.pack(side="right")
        self._describe_handle()

    # --- updates, all on Tk's loop ----------------------------------------------------------

    def start(self) -> None:
        """Show the page as it is now, then follow the ticks."""
        self._update()

    def _update(self) -> None:
        self._after = None
        if self._closed:
            return
        try:
            snap = self.session.page.read()
        except (NtStatusError, ValueError):
            self._stopped(None, "The driver stopped: its handle is closed.")
            return
        if snap.state == STATE_STOPPED:
            self._show(snap)
            self._stopped(snap, f"The driver stopped (pid {snap.writer_pid}). Close the window to quit.")
            return
        now = time.monotonic()
        if snap.tick_count != self._last_tick:
            self._last_tick = snap.tick_count
            self._last_news = now
            self._show(snap)
            self.shown += 1
            log.info("tick %d shown: %s", snap.tick_count, self.clock.cget("text"))
            if self.count is not None and self.shown >= self.count:
                self.root.after_idle(self.close, "--count")
                return
            delay = next_deadline_delay(snap)
        else:
            if now - self._last_news > patience(snap.interval_ns):
                try:
                    self.session.device.query_status()
                except (NtStatusError, ValueError):  # ValueError: the handle already found it broken
                    self._stopped(snap, f"The driver (pid {snap.writer_pid}) is gone. Close the window to quit.")
                    return
                self._last_news = now
            delay = retry_step(snap)
        self._after = self.root.after(max(1, math.ceil(delay * 1000)), self._update)

    def _show(self, snap: PageSnapshot) -> None:
        try:
            times = page_times(snap)
        except PageTimeError as err:
            self.banner.configure(text=str(err))
            return
        local = times.local
        running = snap.state == STATE_RUNNING
        self.clock.configure(text=f"{local:%H:%M:%S}", fg=_CLOCK if running else _MUTED)
        self.date.configure(text=f"{local:%A %d %B %Y}   {times.offset_text}")
        self.values["UTC"].configure(text=f"{times.utc:%H:%M:%S   %Y-%m-%d}")
        colour = {STATE_RUNNING: _GREEN, STATE_STOPPED: _RED}.get(snap.state, _YELLOW)
        self.values["Driver"].configure(text=f"● {snap.state_name}   pid {snap.writer_pid}", fg=colour)
        self.values["Instance"].configure(text=snap.instance_id.hex())
        late = describe_lateness(self.meter.measure(snap))
        self.values["Tick"].configure(text=f"{snap.tick_count}   every {describe_interval(snap.interval_ns)}   {late}")

    def _describe_handle(self) -> None:
        session = self.session
        if session.device.closed:
            text = "closed"
        else:
            page = session.page
            text = f"open, page at {page.address:#x} (read-only)"
        self.values["Handle"].configure(text=text)
        private = f"  (private driver, pid {session.private_pid})" if session.private_pid else ""
        self.values["Device"].configure(text=session.path + private)

    def _stopped(self, snap: PageSnapshot | None, message: str) -> None:
        self.clock.configure(fg=_MUTED)
        if snap is not None:
            self.values["Driver"].configure(text=f"● stopped   pid {snap.writer_pid}", fg=_RED)
        self.values["Handle"].configure(text="open, but the driver is gone (the page stays mapped, frozen)")
        self.banner.configure(text=message)
        log.info("driver stopped: %s", message)

    def _closer(self, how: str) -> Callable[[tk.Event[tk.Misc]], None]:
        """A key binding's callback that closes the window, naming the key in the log."""

        def close(_event: tk.Event[tk.Misc]) -> None:
            self.close(how)

        return close

    def close(self, how: str = "the program") -> None:
        """Close the handle, then the window. Idempotent. `how` names what closed it, for the log."""
        if self._closed:
            return
        self._closed = True
        log.info("window closed by %s", how)
        if self._after is not None:
            self.root.after_cancel(self._after)
            self._after = None
        self.session.device.close()
        log.info("handle closed")
        self.root.destroy()
