"""`sharingmemory watch`: the seed's "Kernel Timer" dialog as a live terminal display.

Theory of operation. The seed's program read the page every 1000 ms beside a driver that also
wrote it every 1000 ms, so it skipped or repeated a second. `watch` waits for the tick instead
(`SharedPage.wait_next`: the driver's per-handle eventfd, or a sleep to the deadline the page
announces) and shows each tick once, in the form `_display.choose_display` picks.

Lifetime. A driver that stops (state=stopped in the page, or its socket hung up) ends the watch
with `DriverStopped`, unless `follow`: then the device's path is retried with backoff until a
driver serves it again, the new page is mapped and the display goes on, saying that the
instance changed. The terminal is restored on every way out, Ctrl-C included (the caller turns
KeyboardInterrupt into exit status 130).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TextIO

from .._defs import STATE_STOPPED, DeviceNotConnected, DeviceNotFound, IoTimeout, resolve_device_name
from . import sections
from .display import Display, Frame, LatenessMeter, choose_display
from .exits import EXIT_DRIVER_STOPPED, EXIT_OK, CommandError
from .options import add_client_options, add_private_driver_options, parse_positive
from .session import Session, default_places, next_tick, open_session

#: Backoff of `--follow` while no driver serves the path: first retry, growth, ceiling (seconds).
FOLLOW_FIRST_RETRY: Final = 0.05
FOLLOW_MAX_RETRY: Final = 2.0


class DriverStopped(Exception):  # noqa: N818 - an event, named like the statuses of _status
    """The driver went away while it was being watched: it wrote state=stopped, or its socket
    hung up. The message is the one line to show."""


@dataclass
class WatchOptions:
    """`watch`'s command line: the device, how many ticks, how to show them, whether to follow."""

    socket: str | None = None
    timeout: float = 5.0
    interval: str = "1s"
    count: int | None = None
    as_json: bool = False
    follow: bool = False
    quiet: bool = False  # -q: no notice of a private driver started for the session


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = commands.add_parser("watch", help="show the local time from the shared page at each tick")
    add_client_options(watch)
    watch.add_argument("--count", type=parse_positive, metavar="N", help="stop after N ticks")
    add_private_driver_options(watch)
    watch.add_argument("--json", action="store_true", help="one JSON object per tick (JSON Lines)")
    watch.add_argument(
        "--follow",
        action="store_true",
        help="when the driver stops, wait for a new one at the same path and go on "
        "(waits for the first one too; never starts a private driver)",
    )
    watch.add_argument("section", nargs="?", default="time", metavar="SECTION", help="a section (default: time)")
    watch.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    if args.section != "time":
        return sections.watch_section(args)
    options = WatchOptions(
        socket=args.socket, timeout=args.timeout, interval=args.interval,
        count=args.count, as_json=args.json, follow=args.follow, quiet=args.quiet,
    )  # fmt: skip
    try:
        run_watch(options)
    except DriverStopped as err:
        raise CommandError(str(err), EXIT_DRIVER_STOPPED) from err
    return EXIT_OK


def run_watch(options: WatchOptions, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Show the page at each tick until `options.count` ticks were shown.

    Raises DriverStopped when the driver goes away (unless following), DeviceNotFound /
    AccessDenied when the device cannot be opened, KeyboardInterrupt on Ctrl-C; the terminal is
    restored before any of them leaves.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    with choose_display(out, err, as_json=options.as_json) as display:
        _Watch(options, display, err).run()


class _Watch:
    """The state of one `watch`: ticks shown, the instance last seen, the lateness meter."""

    def __init__(self, options: WatchOptions, display: Display, err: TextIO) -> None:
        self.options = options
        self.display = display
        self.err = err
        self.shown = 0
        self.meter = LatenessMeter()
        self.instance: bytes | None = None
        self.last: Frame | None = None

    def run(self) -> None:
        while True:
            with self._session() as session:
                if self._watch(session):
                    return
                private = session.private_pid is not None
            reason = "the private driver stopped" if private else "the driver stopped"
            if not self.options.follow or private:
                raise DriverStopped(self._stopped_text(reason))
            where = session.path if self.options.socket else " or ".join(default_places())
            self.display.notice(f"{reason}; waiting for a driver at {where}", self.last)

    def _stopped_text(self, reason: str) -> str:
        if self.last is None:
            return reason
        snap = self.last.snap
        return f"{reason} (pid {snap.writer_pid}, instance {snap.instance_id.hex()[:8]}, after tick {snap.tick_count})"

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """The next session: at once, or with `follow`, once a driver serves the path. A
        follower never starts a private driver: it waits for the one the user runs."""
        options = self.options
        if not options.follow:
            with open_session(
                options.socket,
                timeout=options.timeout,
                interval=options.interval,
                private_ok=True,
                announce=None if options.quiet else self.err,
            ) as session:
                yield session
            return
        delay = FOLLOW_FIRST_RETRY
        # With no --socket each try is open_device()'s own default order, so a follower finds
        # the system driver too, not only the user's path, and a restart of either.
        path = options.socket
        where = resolve_device_name(path) if path else " or ".join(default_places())
        waiting_said = self.last is not None  # the stop notice already said it waits
        while True:
            stack = contextlib.ExitStack()
            try:
                session = stack.enter_context(open_session(path, timeout=options.timeout))
            except (DeviceNotFound, DeviceNotConnected, IoTimeout):
                if not waiting_said:
                    self.display.notice(f"no driver at {where}; waiting for one", self.last)
                    waiting_said = True
                time.sleep(delay)
                delay = min(delay * 2, FOLLOW_MAX_RETRY)
                continue
            with stack:
                yield session
            return

    def _watch(self, session: Session) -> bool:
        """Show ticks from `session` until `count` is reached (True) or the driver stops (False)."""
        try:
            snap = session.page.read()
        except DeviceNotConnected:
            return False
        notice, notice_until = "", 0
        if self.instance is not None and snap.instance_id != self.instance:
            notice = f"new driver: instance {snap.instance_id.hex()[:8]} (was {self.instance.hex()[:8]})"
            notice_until = self.shown + 5  # long enough to be read on the live display
            self.display.instance_changed(f"{notice}, pid {snap.writer_pid}")
        self.instance = snap.instance_id
        while True:
            if self.shown >= notice_until:
                notice = ""
            frame = Frame(snap, self.meter.measure(snap), session.path, session.private_pid, notice)
            self.last = frame
            if snap.state == STATE_STOPPED:
                self.display.show_last(frame)
                return False
            self.display.show(frame)
            self.shown += 1
            if self.options.count is not None and self.shown >= self.options.count:
                return True
            try:
                snap = next_tick(session, snap)
            except DeviceNotConnected:
                frame.gone = True
                self.display.show_last(frame)
                return False
