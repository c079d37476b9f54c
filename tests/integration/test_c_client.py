"""The language-neutral ABI, checked from C: page.h against the Python page, read_time.c against a driver.

Both C programs are compiled here with the warnings the project promises (-std=c11 -Wall -Wextra
-Werror, and -pedantic for the header), so a header that drifts from the Python layout, or a client
that no longer builds, fails a test. The header's offsets are proved by its own _Static_asserts;
these tests prove the values behind them: a page written by the Python PageWriter reads back the
same from C.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharingmemory._defs.page import (
    EPOCH_AS_FILETIME,
    FILETIME_TICKS_PER_SECOND,
    PAGE_SIZE,
    SEQ_OFFSET,
    PageWriter,
    check_header,
    read_snapshot,
)
from sharingmemory._defs.status import RevisionMismatch
from sharingmemory.cli.private_driver import stop_process
from tests.support import DriverProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
READ_TIME_C = ROOT / "examples" / "c" / "read_time.c"
CC = shutil.which("cc")

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (`cc`) on PATH: the C examples cannot be built")

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{INCLUDE}"]

# A reader written only against page.h: map a page file, check it, take a snapshot, print it.
PAGE_DUMP_C = textwrap.dedent(
    r"""
    #define _POSIX_C_SOURCE 200809L
    #include <fcntl.h>
    #include <inttypes.h>
    #include <stdio.h>
    #include <sys/mman.h>
    #include <unistd.h>

    #include "sharingmemory/page.h"

    int main(int argc, char **argv)
    {
        struct sharingmemory_snapshot s;
        const struct sharingmemory_page *page;
        void *address;
        int fd, err;
        size_t i;

        if (argc != 2)
            return 2;
        fd = open(argv[1], O_RDONLY);
        if (fd < 0)
            return 2;
        address = mmap(NULL, SHARINGMEMORY_PAGE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (address == MAP_FAILED)
            return 2;
        page = address;
        err = sharingmemory_page_check(page, SHARINGMEMORY_PAGE_SIZE);
        if (err == 0)
            err = sharingmemory_page_read(page, &s);
        if (err != 0) {
            fprintf(stderr, "error %d: %s\n", err, sharingmemory_strerror(err));
            return 1;
        }
        printf("seq=%" PRIu64 "\n", s.seq);
        printf("local_time=%" PRId64 "\n", s.local_time);
        printf("system_time=%" PRId64 "\n", s.system_time);
        printf("time_zone_bias=%" PRId64 "\n", s.time_zone_bias);
        printf("realtime_ns=%" PRId64 "\n", s.realtime_ns);
        printf("monotonic_ns=%" PRId64 "\n", s.monotonic_ns);
        printf("tick_count=%" PRIu64 "\n", s.tick_count);
        printf("interval_ns=%" PRIu64 "\n", s.interval_ns);
        printf("state=%" PRIu32 "\n", s.state);
        printf("writer_pid=%" PRIu32 "\n", s.writer_pid);
        printf("instance_id=");
        for (i = 0; i < sizeof s.instance_id; i++)
            printf("%02x", s.instance_id[i]);
        printf("\n");
        printf("unix_seconds=%" PRId64 "\n", sharingmemory_filetime_to_unix_seconds(s.system_time));
        printf("page_state=%" PRIu32 "\n", sharingmemory_page_state(page));
        return 0;
    }
    """
)


def _run(*command: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program to its end; its exit status is the test's to check."""
    return subprocess.run(
        [str(part) for part in command], check=False, capture_output=True, text=True, timeout=30, env=env
    )


def _compile(source: Path, output: Path, *extra: str) -> Path:
    assert CC is not None
    result = _run(CC, *CFLAGS, *extra, "-o", output, source)
    assert result.returncode == 0, f"{source.name} does not compile:\n{result.stderr}"
    return output


@pytest.fixture(scope="module")
def read_time(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/c/read_time.c, built with the flags its header comment promises."""
    return _compile(READ_TIME_C, tmp_path_factory.mktemp("c") / "read_time")


@pytest.fixture(scope="module")
def page_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reader of page files that includes page.h, built with -pedantic."""
    directory = tmp_path_factory.mktemp("c")
    source = directory / "page_dump.c"
    source.write_text(PAGE_DUMP_C)
    return _compile(source, directory / "page_dump", "-pedantic")


def _seconds_of_day(line: str) -> int:
    hours, minutes, seconds = (int(part) for part in line.split(":"))
    assert 0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 60, line
    return hours * 3600 + minutes * 60 + seconds


def _local_seconds(filetime: int) -> int:
    return (filetime - EPOCH_AS_FILETIME) // FILETIME_TICKS_PER_SECOND


def _read_line(process: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """One line of the process's stdout, or a failure after `timeout` (never a hung test)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the C client printed nothing"
    return process.stdout.readline()


# --- the C client against a real driver --------------------------------------------------------


def test_c_client_prints_the_time_in_the_page(driver: DriverProcess, read_time: Path) -> None:
    """The times it prints are the page's: between the snapshots taken before and after its run."""
    with driver.open() as device:  # our mapping keeps the page alive across the C client's run
        page = device.map_shared_memory()
        before = page.read()
        result = _run(read_time, "-n", "2", driver.socket_path)
        after = page.read()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    # It waited for a tick after the one it showed first, so the page moved during its run.
    assert after.tick_count > before.tick_count
    low, high = _local_seconds(before.local_time), _local_seconds(after.local_time)
    for line in lines:
        # The printed second lies in [before, after], modulo midnight.
        assert (_seconds_of_day(line) - low) % 86_400 <= high - low, (line, before, after)


def test_c_client_uses_the_socket_environment_variable(driver: DriverProcess, read_time: Path) -> None:
    env = {**os.environ, "SHARINGMEMORY_SOCKET": driver.socket_path}
    result = _run(read_time, "-n", "1", env=env)
    assert result.returncode == 0, result.stderr
    _seconds_of_day(result.stdout.strip())


@contextlib.contextmanager
def _running(read_time: Path, driver: DriverProcess) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The C client against `driver`, once it printed its first time; killed if a test leaves it."""
    with subprocess.Popen(
        [str(read_time), driver.socket_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            yield process, _read_line(process)
        finally:
            stop_process(process)


def test_c_client_exits_3_when_the_driver_stops(driver: DriverProcess, read_time: Path) -> None:
    with _running(read_time, driver) as (process, first):
        _seconds_of_day(first.strip())
        assert driver.terminate() == 0
        _stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 3, stderr
    assert len(stderr.splitlines()) == 1
    assert "driver stopped" in stderr


def test_c_client_exits_3_when_the_driver_dies(driver: DriverProcess, read_time: Path) -> None:
    """SIGKILL leaves the page saying "running"; the hang-up of the connection tells the client."""
    with _running(read_time, driver) as (process, _first):
        driver.process.kill()
        driver.process.wait(10)
        _stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 3, stderr
    assert len(stderr.splitlines()) == 1
    assert "closed the connection" in stderr


def test_c_client_closes_its_handle_on_sigint(driver: DriverProcess, read_time: Path) -> None:
    with _running(read_time, driver) as (process, _first):
        assert driver.status().mapped_handles == 1
        process.send_signal(signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert stderr == ""
    assert wait_for(lambda: driver.status().mapped_handles == 0)


def test_c_client_reports_a_missing_driver(tmp_path: Path, read_time: Path) -> None:
    result = _run(read_time, tmp_path / "nothing-here")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "no driver at" in result.stderr


@pytest.mark.parametrize("arguments", [["-n", "0"], ["-n", "x"], ["-q"], ["a", "b"]])
def test_c_client_refuses_bad_usage(read_time: Path, arguments: list[str]) -> None:
    result = _run(read_time, *arguments)
    assert result.returncode == 2
    assert result.stderr


# --- page.h against the Python page writer -----------------------------------------------------

INSTANCE_ID = bytes(range(0xA0, 0xB0))


def _python_page(*, ticks: int = 3, stop: bool = False) -> bytearray:
    """A page written by the Python PageWriter, with a distinct value in every field."""
    buffer = bytearray(PAGE_SIZE)
    writer = PageWriter(buffer, interval_ns=123_456_789, writer_pid=424_242, instance_id=INSTANCE_ID)
    for tick in range(ticks):
        writer.update(
            realtime_ns=1_795_736_232_886_639_816 + tick * 123_456_789,
            monotonic_ns=16_304_243_080_414 + tick * 123_456_789,
            time_zone_bias=-288_000_000_000,  # UTC+8
        )
    if stop:
        writer.stop(realtime_ns=1_795_736_299_000_000_001, monotonic_ns=16_304_299_000_000_001, time_zone_bias=3600)
    writer.release()
    return buffer


def _dump(page_dump: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return _run(page_dump, path)


@pytest.mark.parametrize("stop", [False, True], ids=["running", "stopped"])
def test_page_h_reads_what_python_writes(tmp_path: Path, page_dump: Path, stop: bool) -> None:
    buffer = _python_page(stop=stop)
    path = tmp_path / "page"
    path.write_bytes(buffer)
    result = _dump(page_dump, path)
    assert result.returncode == 0, result.stderr
    from_c = dict(line.split("=", 1) for line in result.stdout.splitlines())

    snap = read_snapshot(buffer)
    expected = {name: str(value) for name, value in snap._asdict().items()}
    expected["instance_id"] = INSTANCE_ID.hex()
    expected["unix_seconds"] = str((snap.system_time - EPOCH_AS_FILETIME) // FILETIME_TICKS_PER_SECOND)
    expected["page_state"] = str(snap.state)
    assert from_c == expected
    assert snap.state == (2 if stop else 1)
    assert snap.tick_count == 3


@pytest.mark.parametrize(
    ("offset", "data", "error"),
    [
        (0, b"XHMT", "-2"),  # magic
        (4, (2).to_bytes(2, "little"), "-3"),  # abi_major
        (8, (8192).to_bytes(4, "little"), "-1"),  # page_size
        (12, (100).to_bytes(4, "little"), "-1"),  # header_size smaller than ABI 1.0's
        (SEQ_OFFSET, (7).to_bytes(8, "little"), "-4"),  # seq odd for ever: a writer died mid-update
    ],
    ids=["magic", "major", "page_size", "header_size", "torn"],
)
def test_page_h_refuses_what_python_refuses(
    tmp_path: Path, page_dump: Path, offset: int, data: bytes, error: str
) -> None:
    buffer = _python_page()
    buffer[offset : offset + len(data)] = data
    path = tmp_path / "page"
    path.write_bytes(buffer)
    result = _dump(page_dump, path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error {error}: "), result.stderr
    if offset != SEQ_OFFSET:  # the Python reader agrees (its torn-page bound takes a second to run out)
        with pytest.raises(RevisionMismatch):
            check_header(buffer)


def test_page_h_accepts_a_newer_minor(tmp_path: Path, page_dump: Path) -> None:
    buffer = _python_page()
    buffer[6:8] = (7).to_bytes(2, "little")  # abi_minor 7: fields added after header_size only
    buffer[12:16] = (200).to_bytes(4, "little")
    path = tmp_path / "page"
    path.write_bytes(buffer)
    assert _dump(page_dump, path).returncode == 0
