"""The `sharingmemory` command: serve the device, watch the page, read it once, ask the status.

Every failure ends as one line on stderr (`sharingmemory: error: ...`) and a documented exit
status; tracebacks are for bugs only.

Exit status: 0 success; 1 the driver or the system reported an error; 2 bad usage;
3 the driver stopped while `watch` was running; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from . import __version__
from ._activation import ServiceManager, service_manager
from ._client import Device
from ._driver import MIN_INTERVAL_NS, AccessPolicy, DriverConfig
from ._paths import default_socket_path
from ._server import DeviceServer, ServerConfig, default_handle_limits, raise_fd_limit
from ._status import NtStatusError
from ._watch import DriverStopped, WatchOptions, open_session, run_watch, snapshot_json

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRIVER_STOPPED = 3
EXIT_INTERRUPTED = 130

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, None: 1_000_000_000}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CommandError(Exception):
    """A failure to report as one line, with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def parse_duration(text: str) -> int:
    """`1s`, `250ms`, `1ms`, `500us`, `2` (seconds) -> nanoseconds; at least 1 ms."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (try 1s, 250ms or 1ms)")
    value, unit = match.groups()
    nanoseconds = round(float(value) * _UNIT_NS[unit])
    if nanoseconds < MIN_INTERVAL_NS:
        raise argparse.ArgumentTypeError(f"duration {text!r} is shorter than the 1 ms minimum")
    return nanoseconds


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (octal, like 0660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text!r} is out of range")
    return mode


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid id {text!r} (a number)") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"id {text} is out of range")
    return value


# --- serve --------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    policy = AccessPolicy(uids=frozenset({os.getuid(), *args.allow_uid}), gids=frozenset(args.allow_gid))
    max_handles, max_per_uid = default_handle_limits(raise_fd_limit())
    try:
        driver = DriverConfig(
            interval_ns=args.interval, policy=policy,
            max_handles=args.max_handles or max_handles, max_handles_per_uid=args.max_handles_per_uid or max_per_uid,
        )  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err
    config = ServerConfig(
        socket_path=args.socket or default_socket_path(), driver=driver,
        socket_mode=args.socket_mode, dir_mode=args.dir_mode, create_timeout=args.create_timeout,
    )  # fmt: skip
    passed = service_manager(take=not args.check_config)
    config = _under_service_manager(args, config, passed)
    if args.check_config:
        print(f"configuration OK: {_describe_serve(config, passed)}")
        return EXIT_OK
    with DeviceServer(config, listener=passed.listener) as server:
        server.serve_forever()
    return EXIT_OK


def _under_service_manager(args: argparse.Namespace, config: ServerConfig, passed: ServiceManager) -> ServerConfig:
    """`config` as the service manager changes it (its socket replaces --socket, its watchdog
    is fed), after the checks the server would make too late or not at all: a socket mode that
    locks everyone out is accepted by the kernel without a word. With --check-config the
    socket's place is checked as the server would check it, but nothing is created."""
    import dataclasses
    import os

    try:
        if passed.watchdog_interval is not None:
            config = dataclasses.replace(config, watchdog_interval=passed.watchdog_interval)
        if passed.socket_name is None:
            _check_modes(config)
            if args.check_config:
                _check_socket_location(config.socket_path)
            return config
        if args.socket and os.path.abspath(args.socket) != passed.socket_name:
            raise CommandError(
                f"--socket {args.socket} is not the socket the service manager passed ({passed.socket_name})",
                EXIT_USAGE,
            )
        logging.getLogger("sharingmemory.cli").info("socket %s passed by the service manager", passed.socket_name)
        return dataclasses.replace(config, socket_path=passed.socket_name)
    except BaseException:
        if passed.listener is not None:
            passed.listener.close()
        raise


def _check_modes(config: ServerConfig) -> None:
    if not config.socket_mode & 0o200:
        raise CommandError(
            f"--socket-mode {config.socket_mode:04o} denies the owner write permission, which connect(2) needs",
            EXIT_USAGE,
        )
    if config.dir_mode & 0o700 != 0o700:
        raise CommandError(
            f"--dir-mode {config.dir_mode:04o} denies the owner rwx on the directory the socket is created in",
            EXIT_USAGE,
        )
    if config.dir_mode & 0o002:
        raise CommandError(
            f"--dir-mode {config.dir_mode:04o} makes the directory writable by everyone, which the driver refuses",
            EXIT_USAGE,
        )


def _check_socket_location(path: str) -> None:
    """The checks DeviceServer makes when it creates the socket (`_server._prepare_directory`,
    `_SocketFile`), made without creating anything; keep the two in step."""
    import os
    import stat

    from ._server import check_socket_path
    from ._status import DeviceConfigurationError

    path = check_socket_path(path)
    directory = os.path.dirname(path)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if not os.path.isdir(parent):
            raise DeviceConfigurationError(f"cannot create socket directory {directory}: {parent} is missing") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DeviceConfigurationError(f"cannot create socket directory {directory}: permission denied") from None
        return
    if not stat.S_ISDIR(info.st_mode):
        raise DeviceConfigurationError(f"{directory} is not a directory (a symlink is refused too)")
    if info.st_uid not in (0, os.getuid()):
        raise DeviceConfigurationError(f"{directory} belongs to uid {info.st_uid}; refusing to serve from it")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise DeviceConfigurationError(f"{directory} is writable by everyone; refusing to serve from it")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DeviceConfigurationError(f"cannot create the socket in {directory}: permission denied")
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(existing.st_mode):
        raise DeviceConfigurationError(f"{path} exists and is not a socket; refusing to replace it")


def _describe_serve(config: ServerConfig, passed: ServiceManager) -> str:
    import os

    if passed.socket_name is not None:
        where = f"socket {passed.socket_name} (passed by the service manager)"
    else:
        where = f"socket {os.path.abspath(config.socket_path)}"
    text = f"{where}, interval {config.driver.interval_ns / 1e6:g} ms"
    if config.watchdog_interval is not None:
        text += f", WATCHDOG=1 every {config.watchdog_interval:g} s"
    return text


# --- install-unit -------------------------------------------------------------------------------


def _cmd_install_unit(args: argparse.Namespace) -> int:
    """Write the service and socket units, all or nothing: every file is checked before any is
    written, so a refusal leaves the directory as it was."""
    import os

    from . import _units

    python = sys.executable
    if not python or not os.path.isabs(python):
        raise CommandError("cannot tell this interpreter's absolute path (sys.executable is empty)")
    # What the service must be able to read: the interpreter (through a venv's symlink too),
    # its prefixes and this package; any of them under /home or /root rules out ProtectHome=yes.
    needed = [os.path.realpath(python), sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(__file__))]
    files = _units.units(python, user=args.user, needed_paths=needed, version=__version__)
    directory = os.path.abspath(args.dir or (_user_unit_dir() if args.user else _units.SYSTEM_UNIT_DIR))
    plan: list[tuple[str, str | None]] = []
    for name, text in files.items():
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as existing:
                current: str | None = existing.read()
        except FileNotFoundError:
            current = None
        except (OSError, UnicodeDecodeError) as err:
            raise CommandError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
        if current is not None and current != text and not args.force:
            raise CommandError(f"{path} exists and differs from the unit to write; --force replaces it")
        plan.append((path, None if current == text else text))
    try:
        os.makedirs(directory, 0o755, exist_ok=True)
        for path, content in plan:
            if content is not None:
                _write_file(path, content)
    except OSError as err:
        hint = "" if args.user or args.dir else " (run as root, or use --user)"
        raise CommandError(f"cannot write {err.filename or directory}: {err.strerror}{hint}") from err
    for path, content in plan:
        print(f"{'wrote' if content is not None else 'unchanged'} {path}")
    home = _units.protect_home(args.user, [python, *needed])
    if not args.user and home != "yes":
        print(f"note: ProtectHome={home}, since this Python lives under a home directory")
    systemctl = "systemctl --user" if args.user else "systemctl"
    print("next:")
    print(f"  {systemctl} daemon-reload")
    print(f"  {systemctl} enable --now {_units.SOCKET_UNIT}")
    return EXIT_OK


def _user_unit_dir() -> str:
    import os

    from . import _units

    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config_home):
        config_home = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, _units.USER_UNIT_DIR)


def _write_file(path: str, text: str) -> None:
    """Replace `path` atomically (a reader, or systemd's daemon-reload, sees the old unit or the
    new one, never half of one), with mode 0644 whatever the umask."""
    import os

    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --- clients ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[Device]:
    """Open the device named on the command line; `read` and `status` never start a private
    driver, since the page of a driver that stops at once would tell nothing."""
    with open_session(args.socket, timeout=args.timeout) as session:
        yield session.device


def _cmd_read(args: argparse.Namespace) -> int:
    with _open(args) as device:
        snap = device.map_shared_memory().read()
    if args.json:
        print(json.dumps(snapshot_json(snap)))
    else:
        print(f"{snap.local_datetime:%Y-%m-%d %H:%M:%S%z}  tick {snap.tick_count}  {snap.state_name}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    with _open(args) as device:
        status = device.query_status()
    data: dict[str, Any] = status._asdict()
    data["instance_id"] = status.instance_id.hex()
    data["socket"] = device.path
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key:16} {value}")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    options = WatchOptions(
        socket=args.socket, timeout=args.timeout, interval=args.interval,
        count=args.count, as_json=args.json, follow=args.follow,
    )  # fmt: skip
    try:
        run_watch(options)
    except DriverStopped as err:
        raise CommandError(str(err), EXIT_DRIVER_STOPPED) from err
    return EXIT_OK


def _cmd_gui(args: argparse.Namespace) -> int:
    from ._gui import GuiOptions, GuiUnavailable, run_gui  # tkinter and its window, only when asked for

    try:
        run_gui(GuiOptions(socket=args.socket, timeout=args.timeout, interval=args.interval, count=args.count))
    except GuiUnavailable as err:
        raise CommandError(f"error: {err}") from err
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sharingmemory",
        description="Share a live page of memory (the local time, written at every tick) "
        "between a driver daemon and its readers.",
        epilog="Exit status: 0 ok, 1 error, 2 bad usage, 3 driver stopped during watch, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: every resource)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    socket_help = f"the device's socket (default: {default_socket_path()}, or $SHARINGMEMORY_SOCKET)"

    serve = commands.add_parser("serve", help="run the driver daemon in the foreground")
    serve.add_argument("--socket", metavar="PATH", help=socket_help)
    serve.add_argument(
        "--interval",
        type=parse_duration,
        default=1_000_000_000,
        metavar="DURATION",
        help="timer period: 1s, 250ms, 1ms (default 1s)",
    )
    serve.add_argument(
        "--allow-uid",
        type=_id,
        action="append",
        default=[],
        metavar="UID",
        help="also let this uid open the device (repeatable)",
    )
    serve.add_argument(
        "--allow-gid",
        type=_id,
        action="append",
        default=[],
        metavar="GID",
        help="also let this primary gid open the device (repeatable)",
    )
    serve.add_argument(
        "--max-handles",
        type=_positive,
        metavar="N",
        help="open handles at most, overall (default: the open-file limit, raised to its hard limit, "
        "less a reserve of 64, halved since a handle may hold two fds)",
    )
    serve.add_argument(
        "--max-handles-per-uid",
        type=_positive,
        metavar="N",
        help="open handles at most per uid (default: half of --max-handles' default)",
    )
    serve.add_argument(
        "--create-timeout",
        type=_positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="close a connection that sends no CREATE within this time (default 5)",
    )
    serve.add_argument(
        "--socket-mode", type=_octal_mode, default=0o660, metavar="MODE", help="mode of the socket file (default 0660)"
    )
    serve.add_argument(
        "--dir-mode",
        type=_octal_mode,
        default=0o750,
        metavar="MODE",
        help="mode of a socket directory it creates (default 0750)",
    )
    serve.add_argument(
        "--check-config",
        action="store_true",
        help="check the options and the service manager's environment, print 'configuration OK' and exit; "
        "creates and binds nothing",
    )
    serve.set_defaults(func=_cmd_serve)

    install = commands.add_parser(
        "install-unit",
        help="write sharingmemory.service and sharingmemory.socket for systemd",
        description="Write the systemd units that run this Python's `-m sharingmemory serve` as a "
        "socket-activated service, then print the systemctl commands that start it.",
    )
    install.add_argument("--user", action="store_true", help="units for your user's manager (systemctl --user)")
    install.add_argument(
        "--dir",
        metavar="DIR",
        help="where to write them (default /etc/systemd/system, with --user ~/.config/systemd/user)",
    )
    install.add_argument("--force", action="store_true", help="replace existing units that differ")
    install.set_defaults(func=_cmd_install_unit)

    for name, func, text in (
        ("watch", _cmd_watch, "show the local time from the shared page at each tick"),
        ("read", _cmd_read, "print one snapshot of the shared page"),
        ("status", _cmd_status, "print the driver's handles, page and timer"),
        ("gui", _cmd_gui, "the Kernel Timer window: the local time from the shared page at each tick"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--socket", metavar="PATH", help=socket_help)
        sub.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="bound on each request (default 5)"
        )
        if name in ("watch", "gui"):
            sub.add_argument(
                "--count", type=_positive, metavar="N", help="stop after N ticks" if name == "watch" else
                "close the window by itself after N ticks",
            )  # fmt: skip
            sub.add_argument(
                "--interval", default="1s", metavar="DURATION", help="timer period of a private driver (default 1s)"
            )
        if name == "watch":
            sub.add_argument("--json", action="store_true", help="one JSON object per tick (JSON Lines)")
            sub.add_argument(
                "--follow",
                action="store_true",
                help="when the driver stops, wait for a new one at the same path and go on "
                "(waits for the first one too; never starts a private driver)",
            )
        elif name != "gui":
            sub.add_argument("--json", action="store_true", help="one JSON object")
        sub.set_defaults(func=func)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    if args.command == "serve" and not args.quiet:
        level = min(level, logging.INFO)  # a daemon says when it starts and stops
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        result: int = args.func(args)
        return result
    except CommandError as err:
        print(f"sharingmemory: {err}", file=sys.stderr)
        return err.exit_status
    except NtStatusError as err:
        print(f"sharingmemory: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
