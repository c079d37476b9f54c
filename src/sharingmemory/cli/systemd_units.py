"""The systemd unit files that install the driver as a service: the seed's Service Control Manager.

Theory of operation. The seed's program registers and starts its driver through the SCM; here
`sharingmemory install-unit` writes two units and systemd does the rest:

* `sharingmemory.socket` owns the device socket, `%t/sharingmemory/SharingMemory` (`%t` is /run
  for the system manager and $XDG_RUNTIME_DIR for a user's, which is where `_paths` looks by
  default). systemd creates it at boot or login, so clients can connect before the driver
  runs; the first connection starts the driver, and connections made while it restarts wait in
  the listen queue instead of failing.
* `sharingmemory.service` runs `python -m sharingmemory serve` with the socket passed as fd 3
  (`_activation`), Type=notify (READY=1 once it serves), a watchdog fed from the event loop,
  and a sandbox that leaves it nothing but its socket, its memfd and the clock.
* For the system manager, the group `sharingmemory` (made by the sysusers.d(5) snippet
  `sharingmemory.conf`): the socket is root:sharingmemory 0660 and the driver admits the
  group's members, primary or supplementary, so `usermod -aG sharingmemory alice` is all an
  operator does. The directory is 0755: systemd creates it root:root before the driver ever
  runs (DirectoryMode= has no group), and the socket's own mode is what guards the device.

Pure: text in, text out. Where the interpreter lives (which decides how much of /home the
sandbox may hide) is measured by the caller and passed in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

SERVICE_UNIT = "sharingmemory.service"
SOCKET_UNIT = "sharingmemory.socket"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
USER_UNIT_DIR = "systemd/user"  # under $XDG_CONFIG_HOME (~/.config)
LISTEN_PATH = "%t/sharingmemory/SharingMemory"
RUNTIME_DIRECTORY = "sharingmemory"
SOCKET_MODE = "0660"
DIRECTORY_MODE = "0750"
WATCHDOG_SEC = 10
# mlock(2) of the one page needs RLIMIT_MEMLOCK >= 4 KiB once CAP_IPC_LOCK is dropped; 64 KiB is
# the kernel's historical default, which some distributions lower for services.
LIMIT_MEMLOCK = "64K"
#: The group a system install serves, and the sysusers.d(5) snippet that creates it.
GROUP = "sharingmemory"
SYSUSERS_FILE = "sharingmemory.conf"
SYSUSERS_DIR = "/etc/sysusers.d"
GROUP_DIRECTORY_MODE = "0755"
_HOME_TREES = ("/home", "/root", "/run/user")

_BARE_WORD = re.compile(r"[\w@%+=:,./-]+")


def exec_word(word: str) -> str:
    """One word of an ExecStart= line (systemd.service(5), "Command lines"): `%` and `$` are
    doubled so no specifier or variable is expanded, and a word with spaces or quotes is quoted."""
    if not word or "\n" in word or "\0" in word:
        raise ValueError(f"cannot put {word!r} on a command line")
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _BARE_WORD.fullmatch(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def protect_home(user: bool, needed_paths: Iterable[str]) -> str:
    """ProtectHome= for a driver that must read `needed_paths` (interpreter, prefixes, package).

    `yes` hides /home, /root and /run/user entirely, which is right for a system service unless
    its Python lives there (a virtualenv or pyenv in a home directory): then only `read-only`
    lets it start. A user's service always runs from its user's home, so it gets `read-only`.
    """
    if user:
        return "read-only"
    for path in needed_paths:
        normal = os.path.normpath(path)
        if any(normal == tree or normal.startswith(tree + "/") for tree in _HOME_TREES):
            return "read-only"
    return "yes"


def service_unit(
    python: str, *, user: bool = False, home: str = "yes", version: str = "", group: str | None = None
) -> str:
    """The text of sharingmemory.service running `python -m sharingmemory serve` (with
    `--socket-group GROUP` when given, so that the driver admits the group's members)."""
    if not os.path.isabs(python):
        raise ValueError(f"the interpreter must be an absolute path, not {python!r}")
    words = [python, "-m", "sharingmemory", "serve", *(["--socket-group", group] if group else [])]
    command = " ".join(exec_word(word) for word in words)
    lines = [
        *_header(version),
        "[Unit]",
        "Description=SharingMemory driver: a live page of the local time, shared with its readers",
        f"Requires={SOCKET_UNIT}",
        f"After={SOCKET_UNIT}",
        "",
        "[Service]",
        "# READY=1 when it serves, WATCHDOG=1 from the event loop itself, STOPPING=1 on SIGTERM.",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "Restart=on-failure",
        "RestartSec=1s",
        "# The socket unit made this directory for its socket; keep it (and the socket in it)",
        "# when the driver stops or restarts.",
        f"RuntimeDirectory={RUNTIME_DIRECTORY}",
        f"RuntimeDirectoryMode={GROUP_DIRECTORY_MODE if group else DIRECTORY_MODE}",
        "RuntimeDirectoryPreserve=yes",
        f"LimitMEMLOCK={LIMIT_MEMLOCK}",
        "UMask=0077",
        "# The sandbox: the driver needs its socket (passed in), memfd_create, mlock and the clock.",
    ]
    if user:
        lines += [
            "# In a user manager (systemd >= 253) these imply PrivateUsers=yes: SO_PEERCRED then",
            "# shows only this user's own uid, which is all the default access policy admits anyway.",
        ]
    lines += [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ProtectHome={home}",
        "PrivateTmp=yes",
    ]
    if not user:
        # Mount and capability options a user manager could only emulate in a user namespace;
        # a user's service has no privileges for them to take away.
        lines += [
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "CapabilityBoundingSet=",
        ]
    lines += [
        "RestrictAddressFamilies=AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        f"Also={SOCKET_UNIT}",
    ]
    return "\n".join(lines) + "\n"


def socket_unit(*, version: str = "", group: str | None = None) -> str:
    """The text of sharingmemory.socket: the device's SEQPACKET socket at the default path,
    owned by `group` when given."""
    lines = [
        *_header(version),
        "[Unit]",
        "Description=SharingMemory device socket",
        "",
        "[Socket]",
        f"ListenSequentialPacket={LISTEN_PATH}",
        f"SocketMode={SOCKET_MODE}",
        *([f"SocketGroup={group}"] if group else []),
        f"DirectoryMode={GROUP_DIRECTORY_MODE if group else DIRECTORY_MODE}",
        "FileDescriptorName=SharingMemory",
        "RemoveOnStop=yes",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]
    return "\n".join(lines) + "\n"


def units(python: str, *, user: bool = False, needed_paths: Iterable[str] = (), version: str = "") -> dict[str, str]:
    """File name -> text, for both units; a system install serves the group `GROUP`."""
    home = protect_home(user, [python, *needed_paths])
    group = None if user else GROUP
    return {
        SERVICE_UNIT: service_unit(python, user=user, home=home, version=version, group=group),
        SOCKET_UNIT: socket_unit(version=version, group=group),
    }


def sysusers_snippet(*, version: str = "") -> str:
    """sysusers.d(5): the group a system install serves; systemd-sysusers creates it at boot
    (and at once when run by hand), never twice."""
    made_by = f"sharingmemory {version}" if version else "sharingmemory"
    return "\n".join([
        f"# Written by `sharingmemory install-unit` ({made_by}). Members of this group may open the",
        "# SharingMemory device: usermod -aG sharingmemory USER",
        f"g {GROUP} -",
    ]) + "\n"  # fmt: skip


def _header(version: str) -> list[str]:
    made_by = f"sharingmemory {version}" if version else "sharingmemory"
    return [
        f"# Written by `sharingmemory install-unit` ({made_by}). Put local changes in a drop-in",
        "# (systemctl edit), so that writing the unit again does not lose them.",
    ]
