"""`sharingmemory install-unit`: write the systemd service and socket units for this Python.

The unit text comes from the pure `_units` module; this module decides where the files go,
refuses to overwrite a different unit without --force, and writes all or nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .. import __version__
from . import systemd_units as _units
from .exits import EXIT_OK, CommandError


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        help="where to write them (default /etc/systemd/system, with --user ~/.config/systemd/user); "
        "the system install's sysusers.d snippet sharingmemory.conf goes to /etc/sysusers.d, or into DIR too",
    )
    install.add_argument("--force", action="store_true", help="replace existing units that differ")
    install.set_defaults(func=cmd_install_unit)


def cmd_install_unit(args: argparse.Namespace) -> int:
    """Write the service and socket units, all or nothing: every file is checked before any is
    written, so a refusal leaves the directory as it was."""

    python = sys.executable
    if not python or not os.path.isabs(python):
        raise CommandError("cannot tell this interpreter's absolute path (sys.executable is empty)")
    # What the service must be able to read: the interpreter (through a venv's symlink too),
    # its prefixes and this package; any of them under /home or /root rules out ProtectHome=yes.
    needed = [os.path.realpath(python), sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(__file__))]
    files = _units.units(python, user=args.user, needed_paths=needed, version=__version__)
    directory = os.path.abspath(args.dir or (_user_unit_dir() if args.user else _units.SYSTEM_UNIT_DIR))
    targets = [(os.path.join(directory, name), text) for name, text in files.items()]
    if not args.user:
        # The group the system units serve: beside the units with --dir (for a package or an
        # image to put in place), else where systemd-sysusers looks.
        sysusers_dir = directory if args.dir else _units.SYSUSERS_DIR
        targets.append((os.path.join(sysusers_dir, _units.SYSUSERS_FILE), _units.sysusers_snippet(version=__version__)))
    plan: list[tuple[str, str | None]] = []
    for path, text in targets:
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
        for path, _content in plan:
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
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
    if not args.user:
        print(f"  systemd-sysusers{'' if not args.dir else ' ' + plan[-1][0]}")
    print(f"  {systemctl} daemon-reload")
    print(f"  {systemctl} enable --now {_units.SOCKET_UNIT}")
    if not args.user:
        print(f"  usermod -aG {_units.GROUP} USER   # for each user who may open the device")
    return EXIT_OK


def _user_unit_dir() -> str:

    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config_home):
        config_home = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, _units.USER_UNIT_DIR)


def _write_file(path: str, text: str) -> None:
    """Replace `path` atomically (a reader, or systemd's daemon-reload, sees the old unit or the
    new one, never half of one), with mode 0644 whatever the umask."""

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
