"""`sharingmemory serve`: options to a ServerConfig, the service manager's part, --check-config.

The daemon itself is `_server.DeviceServer`; this module turns the command line and the
environment systemd leaves (a passed socket, a watchdog period) into its configuration, and
refuses, before anything is created, what the server would only find out too late: a socket
mode that locks everyone out is accepted by the kernel without a word.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import logging
import os

from .._defs import default_socket_path
from .._driver import AccessPolicy, DriverConfig
from .._server import (
    DeviceServer,
    ServerConfig,
    ServiceManager,
    check_socket_location,
    default_handle_limits,
    raise_fd_limit,
    service_manager,
)
from . import sections
from .exits import EXIT_OK, EXIT_USAGE, CommandError
from .options import parse_create_timeout, parse_duration, parse_id, parse_octal_mode, parse_positive, socket_help


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the driver daemon in the foreground")
    serve.add_argument("--socket", metavar="PATH", help=socket_help())
    serve.add_argument(
        "--interval",
        type=parse_duration,
        default=1_000_000_000,
        metavar="DURATION",
        help="timer period: 1s, 250ms, 1ms (default 1s)",
    )
    serve.add_argument(
        "--allow-uid",
        type=parse_id,
        action="append",
        default=[],
        metavar="UID",
        help="also let this uid open the device (repeatable)",
    )
    serve.add_argument(
        "--allow-gid",
        type=parse_id,
        action="append",
        default=[],
        metavar="GID",
        help="also let members of this gid open the device, whether it is their primary or a supplementary "
        "group (repeatable)",
    )
    serve.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="give the socket and its directory this group (name or number; modes 0660 and 0750 by default) "
        "and let its members open the device; the name is resolved again on SIGHUP",
    )
    serve.add_argument(
        "--max-handles",
        type=parse_positive,
        metavar="N",
        help="open handles at most, overall (default: the open-file limit, raised to its hard limit, "
        "less a reserve of 64, halved since a handle may hold two fds)",
    )
    serve.add_argument(
        "--max-handles-per-uid",
        type=parse_positive,
        metavar="N",
        help="open handles at most per uid (default: half of --max-handles' default)",
    )
    serve.add_argument(
        "--create-timeout",
        type=parse_create_timeout,
        default=5.0,
        metavar="SECONDS",
        help="close a connection that sends no CREATE within this time (default 5)",
    )
    serve.add_argument(
        "--socket-mode",
        type=parse_octal_mode,
        default=0o660,
        metavar="MODE",
        help="mode of the socket file (default 0660)",
    )
    serve.add_argument(
        "--dir-mode",
        type=parse_octal_mode,
        metavar="MODE",
        help="mode of a socket directory it creates (default 0750); when given, or with --socket-group, an "
        "existing directory with another mode or group is refused, never used as it is",
    )
    serve.add_argument(
        "--no-passrights",
        dest="refuse_fds",
        action="store_false",
        help="do not set SO_PASSRIGHTS (Linux 6.16+) on the socket: fds a client sends are then received and "
        "closed by a separate thread, as on older kernels (for testing that path)",
    )
    serve.add_argument(
        "--closer-budget",
        type=parse_positive,
        metavar="N",
        help="fds that the thread closing clients' unwanted fds may hold at once, where they arrive at all "
        "(--no-passrights, kernels before 6.16); at least 253, one message's worth (default 1012)",
    )
    serve.add_argument(
        "--check-config",
        action="store_true",
        help="check the options and the service manager's environment, print 'configuration OK' and exit; "
        "creates and binds nothing",
    )
    sections.add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def resolve_group(name: str) -> int:
    """The gid of a group name (or a number), or a usage error naming it."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise CommandError(f"--socket-group {name}: no such group", EXIT_USAGE) from None


def _policy(args: argparse.Namespace) -> AccessPolicy:
    gids = {*args.allow_gid}
    if args.socket_group is not None:
        gids.add(resolve_group(args.socket_group))
    return AccessPolicy(uids=frozenset({os.getuid(), *args.allow_uid}), gids=frozenset(gids))


def cmd_serve(args: argparse.Namespace) -> int:

    policy = _policy(args)
    if args.closer_budget is not None and args.closer_budget < 253:  # SCM_MAX_FD: one message's fds
        raise CommandError(
            f"--closer-budget {args.closer_budget} is below 253, the fds one message can carry", EXIT_USAGE
        )
    group = None if args.socket_group is None else resolve_group(args.socket_group)
    max_handles, max_per_uid = default_handle_limits(raise_fd_limit())
    try:
        driver = DriverConfig(
            interval_ns=args.interval, policy=policy,
            max_handles=args.max_handles or max_handles, max_handles_per_uid=args.max_handles_per_uid or max_per_uid,
            **sections.serve_config(args, os.getuid()),
        )  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err
    config = ServerConfig(
        socket_path=args.socket or default_socket_path(), driver=driver,
        socket_mode=args.socket_mode, dir_mode=0o750 if args.dir_mode is None else args.dir_mode,
        create_timeout=args.create_timeout, refuse_fds=args.refuse_fds, socket_group=group,
        enforce_dir=args.dir_mode is not None or group is not None, closer_budget=args.closer_budget,
    )  # fmt: skip
    passed = service_manager(take=not args.check_config)
    config = _under_service_manager(args, config, passed)
    if args.check_config:
        print(f"configuration OK: {_describe_serve(config, passed)}")
        return EXIT_OK

    def reload() -> tuple[DriverConfig, str]:
        """SIGHUP: group names resolved again; the rest of the command line stays as it was."""
        new = dataclasses.replace(config.driver, policy=_policy(args))
        gids = ", ".join(str(gid) for gid in sorted(new.policy.gids)) or "none"
        return new, f"group names resolved again for the access check (gids admitted: {gids})"

    with DeviceServer(config, listener=passed.listener, on_reload=reload) as server:
        server.serve_forever()
    return EXIT_OK


def _under_service_manager(args: argparse.Namespace, config: ServerConfig, passed: ServiceManager) -> ServerConfig:
    """`config` as the service manager changes it (its socket replaces --socket, its watchdog
    is fed), after the checks the server would make too late or not at all: a socket mode that
    locks everyone out is accepted by the kernel without a word. With --check-config the
    socket's place is checked as the server would check it, but nothing is created."""

    try:
        if passed.watchdog_interval is not None:
            config = dataclasses.replace(config, watchdog_interval=passed.watchdog_interval)
        if passed.socket_name is None:
            _check_modes(config)
            if args.check_config:
                check_socket_location(
                    config.socket_path, dir_mode=config.dir_mode, group=config.socket_group, enforce=config.enforce_dir
                )
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


def _describe_serve(config: ServerConfig, passed: ServiceManager) -> str:

    if passed.socket_name is not None:
        where = f"socket {passed.socket_name} (passed by the service manager)"
    else:
        where = f"socket {os.path.abspath(config.socket_path)}"
    text = f"{where}, interval {config.driver.interval_ns / 1e6:g} ms"
    if config.watchdog_interval is not None:
        text += f", WATCHDOG=1 every {config.watchdog_interval:g} s"
    return text
