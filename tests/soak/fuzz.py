"""Fuzz: hostile messages at a real driver while a well-behaved client watches every tick.

    python -m tests.soak.fuzz --messages 1000000 --workers 2

Fuzz workers (processes) send `--messages` hostile messages in all, each on a connection that
is either fresh or past a valid CREATE: random bytes, truncated requests, oversized messages,
lying lengths, unknown versions and majors, bad magic, non-zero reserved fields, valid headers
with wrong buffers or codes, bit flips of valid requests, requests out of order, and messages
carrying fds the driver never asked for. After each one the worker waits for the driver's
answer: a reply (its status is counted) or the connection closed; anything else (no answer
within 10 s, a reply that does not parse) is a failure. A flooder opens rounds of idle
connections that never send CREATE and checks the driver closes every one. A reader maps the
page the whole time, polls it every half millisecond and must see every tick_count, one after
the other; the driver must never be late by a whole interval, must still be alive at the end,
and must hold the same fds as before (and none of the pipe ends the workers sent it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import sharingmemory
from sharingmemory import IOCTL_GIVE_ME_YOUR_MEMORY, IOCTL_QUERY_STATUS
from sharingmemory._defs.protocol import (
    MAX_MESSAGE_SIZE,
    MajorFunction,
    RemoteProtocolError,
    Request,
    decode_reply,
    encode_request,
)
from sharingmemory._defs.status import is_error
from sharingmemory.winioctl import FILE_READ_DATA, FILE_WRITE_DATA
from tests.support import rss_kib, wait_for

from ._driver import add_driver_arguments, record_timer, soak_driver, worker_report
from ._figures import Figures

_HEADER = struct.Struct("<2sBBIIIII")
_MAJORS = [int(major) for major in MajorFunction]
_CODES = [IOCTL_GIVE_ME_YOUR_MEMORY, IOCTL_QUERY_STATUS, 0, 0xFFFFFFFF, 0x00226008, 0x0022600C, 0x00222000]
ANSWER_TIMEOUT = 10.0


# --- hostile messages ---------------------------------------------------------------------------


def _valid(rng: random.Random) -> bytes:
    major = rng.choice(list(MajorFunction))
    request_id = rng.randrange(1 << 32)
    if major is MajorFunction.IRP_MJ_CREATE:
        return encode_request(Request(major, request_id, rng.choice([1, 2, 3])))
    if major is MajorFunction.IRP_MJ_DEVICE_CONTROL:
        data = rng.randbytes(rng.randrange(0, 64))
        return encode_request(Request(major, request_id, rng.choice(_CODES), rng.choice([0, 4, 8, 80, 4096]), data))
    return encode_request(Request(major, request_id))


def _header(rng: random.Random, **fields: int) -> bytes:
    values = {
        "version": 1, "major": rng.choice(_MAJORS), "request_id": rng.randrange(1 << 32), "code": 0,
        "output_length": 0, "input_length": 0, "reserved": 0,
    }  # fmt: skip
    values.update(fields)
    return _HEADER.pack(
        b"SM", values["version"], values["major"], values["request_id"], values["code"],
        values["output_length"], values["input_length"], values["reserved"],
    )  # fmt: skip


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 300))


def _truncated(rng: random.Random) -> bytes:
    message = _valid(rng)
    return message[: rng.randrange(0, len(message))]


def _oversized(rng: random.Random) -> bytes:
    return bytes(MAX_MESSAGE_SIZE + 1 + rng.randrange(0, 8192))


def _lying_length(rng: random.Random) -> bytes:
    data = rng.randbytes(rng.randrange(0, 100))
    lie = rng.choice([len(data) + 1, max(0, len(data) - 1), 0xFFFFFFFF, rng.randrange(1 << 32), MAX_MESSAGE_SIZE])
    if lie == len(data):
        lie += 1
    return _header(rng, major=MajorFunction.IRP_MJ_DEVICE_CONTROL, input_length=lie) + data


def _unknown_version(rng: random.Random) -> bytes:
    return _header(rng, version=rng.choice([0, 2, 3, 255]))


def _unknown_major(rng: random.Random) -> bytes:
    return _header(rng, major=rng.choice([major for major in range(256) if major not in _MAJORS]))


def _bad_magic(rng: random.Random) -> bytes:
    return rng.randbytes(2) + _valid(rng)[2:]


def _reserved(rng: random.Random) -> bytes:
    return _header(rng, reserved=rng.randrange(1, 1 << 32))


def _wrong_buffers(rng: random.Random) -> bytes:
    """Valid headers whose buffers or codes are wrong for the request."""
    major = rng.choice(_MAJORS)
    data = rng.randbytes(rng.randrange(0, 40))
    output_length = rng.choice([0, 1, 7, MAX_MESSAGE_SIZE, 0xFFFFFFFF, rng.randrange(1 << 32)])
    code = rng.choice([*_CODES, rng.randrange(1 << 32), FILE_READ_DATA | FILE_WRITE_DATA | 0x10])
    return _header(rng, major=major, code=code, output_length=output_length, input_length=len(data)) + data


def _bit_flips(rng: random.Random) -> bytes:
    message = bytearray(_valid(rng))
    for _ in range(rng.randrange(1, 4)):
        bit = rng.randrange(len(message) * 8)
        message[bit // 8] ^= 1 << (bit % 8)
    return bytes(message)


def _out_of_order(rng: random.Random) -> bytes:
    """A well-formed request, whatever state the handle is in (CLOSE first, CREATE twice, ...)."""
    return _valid(rng)


GENERATORS: dict[str, tuple[Callable[[random.Random], bytes], int]] = {
    "random bytes": (_random_bytes, 14),
    "truncated": (_truncated, 10),
    "oversized": (_oversized, 1),
    "lying length": (_lying_length, 10),
    "unknown version": (_unknown_version, 6),
    "unknown major": (_unknown_major, 6),
    "bad magic": (_bad_magic, 6),
    "reserved not zero": (_reserved, 5),
    "wrong buffers": (_wrong_buffers, 14),
    "bit flips": (_bit_flips, 12),
    "out of order": (_out_of_order, 8),
}
FD_SHARE = 0.08  # messages that also carry fds the driver never asked for
#: How long a worker keeps trying while the driver refuses its connections (seconds).
REFUSED_PATIENCE = 60.0


# --- the fuzz worker ----------------------------------------------------------------------------


#: How long a worker's pipe end may stay open in the driver after its connection closed.
PIPE_KEPT_AFTER = 5.0


class _Worker:
    def __init__(self, path: str, seed: int) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.sock: socket.socket | None = None
        self.outcomes: dict[str, int] = {}
        self.categories: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.connections = 0
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.memfd = os.memfd_create("fuzz-probe", os.MFD_CLOEXEC)
        names = list(GENERATORS)
        self.names, self.weights = names, [GENERATORS[name][1] for name in names]

    def _count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            self.sock.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect(self.path)
        self.connections += 1
        if self.rng.random() < 0.5:  # half the connections are past a valid CREATE
            try:
                sock.sendmsg([encode_request(Request(MajorFunction.IRP_MJ_CREATE, 1, FILE_READ_DATA))])
                reply = self._receive(sock)
            except (BrokenPipeError, ConnectionResetError):
                reply = None
            if reply is None or is_error(decode_reply(reply).status):
                # Refused: the flooder (this same uid) holds its share of connections waiting for
                # CREATE. An answer or a clean disconnect, as the goal asks; the caller waits.
                self._count(self.outcomes, "connection refused (this uid has too many waiting for CREATE)")
                sock.close()
                raise _Refused
        self.sock = sock
        return sock

    def _receive(self, sock: socket.socket) -> bytes | None:
        """The next message; None at end of file. Fds that come with it are closed at once."""
        data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE_SIZE + 1, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for fd in struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]):
                    os.close(fd)
        return data or None

    def send_one(self) -> None:
        name = self.rng.choices(self.names, self.weights)[0]
        message = GENERATORS[name][0](self.rng)
        fds = [self.pipe_w, self.memfd][: self.rng.randrange(1, 3)] * self.rng.randrange(1, 4)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        with_fds = self.rng.random() < FD_SHARE
        broken, patience = 0, time.monotonic() + REFUSED_PATIENCE
        while True:
            fresh = self.sock is None
            try:
                sock = self.sock or self._connect()
                try:
                    sock.sendmsg([message], ancillary if with_fds else [])
                except (BrokenPipeError, ConnectionResetError):
                    if not fresh:
                        raise
                    # Closed before this connection sent anything: refused at accept.
                    self._count(self.outcomes, "connection refused (this uid has too many waiting for CREATE)")
                    self.sock = None
                    raise _Refused from None
                break
            except _Refused:
                if time.monotonic() > patience:
                    self._count(self.failures, f"refused for {REFUSED_PATIENCE:.0f} s")
                    return
                time.sleep(0.005)  # the flooder's idle connections go at the driver's CREATE timeout
            except (BrokenPipeError, ConnectionResetError):
                self.sock = None  # the driver closed it after an earlier message: reconnect, resend
                broken += 1
                if broken == 3:
                    self._count(self.failures, "could not send on a fresh connection")
                    return
        self._count(self.categories, name)
        if with_fds:
            self._count(self.categories, "(carrying fds)")
        try:
            reply = self._receive(sock)
        except TimeoutError:
            self._count(self.failures, "no answer within 10 s")
            self.sock = None
            return
        except ConnectionResetError:
            self._count(self.outcomes, "disconnect (closed before reading it, after an earlier error)")
            self.sock = None
            return
        if reply is None:
            self._count(self.outcomes, "disconnect")
            self.sock = None
            return
        try:
            status = decode_reply(reply).status
        except RemoteProtocolError as err:
            self._count(self.failures, f"unparseable reply: {err}")
            return
        self._count(self.outcomes, "error status" if is_error(status) else "success status (a valid request)")

    def run(self, messages: int) -> dict[str, Any]:
        for _ in range(messages):
            self.send_one()
        if self.sock is not None:
            self.sock.close()
        # The driver holds no copy of the pipe's write end: with ours closed, the read end is at EOF.
        # Its closer thread closes what peers send a moment after the loop hands it over (the loop
        # never runs that close itself), so "kept" means still open after PIPE_KEPT_AFTER seconds.
        os.close(self.pipe_w)
        pipe_kept = True
        deadline = time.monotonic() + PIPE_KEPT_AFTER
        while pipe_kept and time.monotonic() < deadline:
            try:
                while os.read(self.pipe_r, 4096):
                    pass
                pipe_kept = False
            except BlockingIOError:
                time.sleep(0.01)
        os.close(self.pipe_r)
        os.close(self.memfd)
        return {
            "categories": self.categories, "outcomes": self.outcomes, "failures": self.failures,
            "connections": self.connections, "pipe_kept": pipe_kept,
        }  # fmt: skip


# --- the well-behaved reader and the idle flooder --------------------------------------------------


def reader(path: str) -> dict[str, Any]:
    """Map the page and poll it every 0.5 ms until stdin closes; every tick must be seen.

    A tick the reader did not see is counted as `stalled` when the reader itself was not
    running for a whole interval before it noticed (its previous poll was that long ago: the
    scheduler's doing, not the driver's), as `missed` otherwise."""
    seen = missed = stalled = went_back = 0
    max_gap_ns = 0
    with sharingmemory.open_device(path, timeout=10) as device:
        page = device.map_shared_memory()
        snap = page.read()
        first = last = snap.tick_count
        interval_ns = snap.interval_ns
        print("ready", flush=True)
        previous_poll = time.monotonic_ns()
        while not select.select([sys.stdin], [], [], 0.0005)[0]:
            now = time.monotonic_ns()
            gap, previous_poll = now - previous_poll, now
            max_gap_ns = max(max_gap_ns, gap)
            tick = page.read().tick_count
            if tick == last:
                continue
            if tick < last:
                went_back += 1
            else:
                seen += 1
                if tick - last > 1:
                    if gap >= interval_ns:
                        stalled += tick - last - 1
                    else:
                        missed += tick - last - 1
            last = tick
        sys.stdin.read()
        alive = device.query_status().pid > 0
    return {
        "first": first, "last": last, "seen": seen, "missed": missed, "stalled": stalled, "went_back": went_back,
        "max_gap_ms": max_gap_ns / 1e6, "alive": alive,
    }  # fmt: skip


class _Refused(Exception):  # noqa: N818 - an outcome, not an error of the harness
    """The driver refused a new connection: this uid already holds its share waiting for CREATE."""


def flooder(path: str, rounds: int, connections: int, timeout: float) -> dict[str, Any]:
    """Rounds of idle connections that never send CREATE; count those the driver closes."""
    opened = closed = refused = 0
    for _ in range(rounds):
        socks = []
        for _ in range(connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError:
                refused += 1
                sock.close()
                continue
            socks.append(sock)
        opened += len(socks)
        for sock in socks:
            try:
                if sock.recv(64) == b"":
                    closed += 1
            except OSError:
                pass
            sock.close()
    return {"opened": opened, "closed_by_driver": closed, "refused": refused}


# --- the conductor ------------------------------------------------------------------------------


def _spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.soak.fuzz", *args], stdin=stdin, stdout=subprocess.PIPE, text=True
    )


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    m: dict[str, Any] = {}
    # --no-passrights: the path where fds do arrive (kernels before 6.16); with SO_PASSRIGHTS the
    # fd messages would fail at the sender (tests/soak/attack.py covers both).
    with soak_driver("fuzz", args, "--create-timeout", str(args.create_timeout), "--no-passrights") as driver:
        fd_dir, path = f"/proc/{driver.pid}/fd", driver.socket_path
        worker_report(_spawn("--worker", path, "--messages", "2000", "--seed", "0"))  # warm up
        m["base_fds"], m["base_rss"] = len(os.listdir(fd_dir)), rss_kib(driver.pid)
        m["load_start"] = os.getloadavg()[0]
        watcher = _spawn("--reader", path, stdin=subprocess.PIPE)
        assert watcher.stdout is not None and watcher.stdin is not None
        watcher.stdout.readline()  # "ready": the page is mapped
        started = time.monotonic()
        share = -(-args.messages // args.workers)
        workers = [
            _spawn("--worker", path, "--messages", str(share), "--seed", str(args.seed * 1000 + n))
            for n in range(args.workers)
        ]
        flood = _spawn(
            "--flood", path, "--rounds", str(args.flood_rounds), "--connections", str(args.flood_connections),
            "--answer-timeout", str(args.create_timeout + 10),
        )  # fmt: skip
        m["max_rss"] = 0
        while any(process.poll() is None for process in [*workers, flood]):
            m["max_rss"] = max(m["max_rss"], rss_kib(driver.pid))
            time.sleep(0.5)
        m["elapsed"] = time.monotonic() - started
        m["load_end"] = os.getloadavg()[0]
        m["workers"] = [worker_report(process) for process in workers]
        m["flood"] = worker_report(flood)
        m["reader"] = worker_report(watcher, stdin="")  # end of its stdin: the reader stops
        m["alive"] = driver.process.poll() is None
        wait_for(lambda: len(os.listdir(fd_dir)) <= m["base_fds"], timeout=10)
        m["end_fds"], m["end_rss"] = len(os.listdir(fd_dir)), rss_kib(driver.pid)
        with driver.open() as device:
            m["status"] = device.query_status()
    return m


def _sum(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for name, count in report.get(key, {}).items():
            total[name] = total.get(name, 0) + count
    return total


def _report(args: argparse.Namespace, m: dict[str, Any]) -> int:
    figures = Figures("fuzz")
    good = [report for report in m["workers"] if "failed" not in report]
    categories, outcomes, failures = _sum(good, "categories"), _sum(good, "outcomes"), _sum(good, "failures")
    sent = sum(count for name, count in categories.items() if not name.startswith("("))
    figures.record("fuzz workers that failed", len(m["workers"]) - len(good), "0", len(good) == len(m["workers"]))
    figures.record("hostile messages sent", sent, f">= {args.messages:,}", sent >= args.messages)
    for name, count in sorted(categories.items()):
        figures.record(f"  {name}", count)
    figures.record("connections used", sum(report["connections"] for report in good))
    for name, count in sorted(outcomes.items()):
        figures.record(f"answered: {name}", count)
    figures.record("failures (no answer, bad reply)", sum(failures.values()), "0", not failures)
    for name, count in sorted(failures.items()):
        figures.record(f"  {name}", count)
    figures.record("seconds", round(m["elapsed"], 1))
    figures.record("load average (1 min) at start / end", f"{m['load_start']:.2f} / {m['load_end']:.2f}")
    figures.record("messages per second", round(sent / m["elapsed"]))
    flood = m["flood"]
    figures.record("idle connections opened", flood.get("opened", 0), "> 0", flood.get("opened", 0) > 0)
    figures.record(
        "idle connections closed by the driver", flood.get("closed_by_driver", 0), "all",
        flood.get("opened", -1) == flood.get("closed_by_driver", 0),
    )  # fmt: skip
    figures.record("idle connections refused", flood.get("refused", 0))
    kept = sum(bool(report["pipe_kept"]) for report in good)
    figures.record("workers whose pipe end the driver kept", kept, "0", kept == 0)
    figures.record("driver alive", m["alive"], "True", m["alive"])
    figures.record(
        "driver fds at start / end", f"{m['base_fds']} / {m['end_fds']}", "equal", m["base_fds"] == m["end_fds"]
    )
    figures.record("driver RSS start / peak / end (KiB)", f"{m['base_rss']} / {m['max_rss']} / {m['end_rss']}")
    reader = m["reader"]
    figures.record("reader ticks seen", reader.get("seen", 0), "> 0", reader.get("seen", 0) > 0)
    figures.record(
        "reader ticks missed while it was polling", reader.get("missed", -1), "0", reader.get("missed", -1) == 0
    )
    figures.record("reader ticks missed while it was not scheduled", reader.get("stalled", -1))
    figures.record("reader's longest gap between polls (ms)", reader.get("max_gap_ms", -1.0))
    figures.record("reader saw tick_count go back", reader.get("went_back", -1), "0", reader.get("went_back", -1) == 0)
    status = m["status"]
    record_timer(figures, args, status)
    figures.record("handles at end", status.handles - 1, "0", status.handles == 1)
    return figures.report(as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="hostile messages in all (default 1,000,000)")
    parser.add_argument("--workers", type=int, default=2, help="fuzz worker processes (default 2)")
    parser.add_argument("--create-timeout", type=float, default=2.0, help="the driver's --create-timeout (default 2)")
    parser.add_argument("--flood-rounds", type=int, default=5, help="rounds of idle connections (default 5)")
    parser.add_argument("--flood-connections", type=int, default=500, help="idle connections per round (default 500)")
    parser.add_argument("--seed", type=int, default=1)
    add_driver_arguments(parser, interval="50ms")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--worker", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--reader", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--flood", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_Worker(args.worker, args.seed).run(args.messages)))
        return 0
    if args.reader:
        print(json.dumps(reader(args.reader)))
        return 0
    if args.flood:
        print(json.dumps(flooder(args.flood, args.rounds, args.connections, args.answer_timeout)))
        return 0
    return _report(args, _measure(args))


if __name__ == "__main__":
    sys.exit(main())
