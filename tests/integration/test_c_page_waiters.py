"""Page ABI 1.1 (`waiters` at 104) from C and from Python, against each other: page.h's
constants, its check of 1.0 and 1.1 pages, and `sharingmemory_page_has_waiters`, on pages the
Python PageWriter writes (and a 1.0 page made from one, as an older driver writes it)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from sharingmemory._defs.page import (
    ABI_MINOR,
    HEADER_SIZE,
    HEADER_SIZE_1_0,
    PAGE_SIZE,
    WAITERS_OFFSET,
    PageWriter,
    check_header,
    read_snapshot,
    waiters_offset,
)
from sharingmemory._defs.status import RevisionMismatch

ROOT = Path(__file__).resolve().parents[2]
CC = shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (`cc`) on PATH: page.h cannot be built")

WAITERS_DUMP_C = textwrap.dedent(
    r"""
    #define _POSIX_C_SOURCE 200809L
    #include <fcntl.h>
    #include <stdio.h>
    #include <sys/mman.h>
    #include <unistd.h>

    #include "sharingmemory/page.h"

    int main(int argc, char **argv)
    {
        if (argc < 2) {
            printf("minor=%u header=%u header_1_0=%u waiters_at=%u\n", SHARINGMEMORY_ABI_MINOR,
                   SHARINGMEMORY_HEADER_SIZE, SHARINGMEMORY_HEADER_SIZE_1_0, SHARINGMEMORY_WAITERS);
            return 0;
        }
        int fd = open(argv[1], O_RDONLY);
        const struct sharingmemory_page *page = mmap(NULL, SHARINGMEMORY_PAGE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (page == MAP_FAILED)
            return 2;
        int err = sharingmemory_page_check(page, SHARINGMEMORY_PAGE_SIZE);
        struct sharingmemory_snapshot snap;
        if (err == 0)
            err = sharingmemory_page_read(page, &snap);
        if (err != 0) {
            printf("error %d\n", err);
            return 1;
        }
        printf("has_waiters=%d waiters=%u ticks=%llu\n", sharingmemory_page_has_waiters(page),
               (unsigned)atomic_load_explicit(&page->waiters, memory_order_relaxed),
               (unsigned long long)snap.tick_count);
        return 0;
    }
    """
)


@pytest.fixture(scope="module")
def waiters_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert CC is not None
    directory = tmp_path_factory.mktemp("c")
    source = directory / "waiters_dump.c"
    source.write_text(WAITERS_DUMP_C)
    output = directory / "waiters_dump"
    command = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", f"-I{ROOT / 'include'}"]
    result = subprocess.run([*command, "-o", str(output), str(source)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return output


def _run(program: Path, *args: str) -> str:
    result = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip()


def _page(waiters: int, *, old: bool = False) -> bytearray:
    buffer = bytearray(PAGE_SIZE)
    writer = PageWriter(buffer, interval_ns=10**9, writer_pid=7, instance_id=bytes(range(16)))
    writer.update(realtime_ns=1_700_000_000 * 10**9, monotonic_ns=1, time_zone_bias=0)
    writer.set_waiters(waiters)
    assert writer.waiters == waiters
    writer.release()
    if old:  # what a 1.0 driver writes: minor 0, header 104, nothing after it
        buffer[6:8] = (0).to_bytes(2, "little")
        buffer[12:16] = HEADER_SIZE_1_0.to_bytes(4, "little")
        buffer[WAITERS_OFFSET : WAITERS_OFFSET + 4] = bytes(4)
    return buffer


def test_the_constants_agree(waiters_dump: Path) -> None:
    assert (
        _run(waiters_dump)
        == f"minor={ABI_MINOR} header={HEADER_SIZE} header_1_0={HEADER_SIZE_1_0} waiters_at={WAITERS_OFFSET}"
    )
    assert (ABI_MINOR, HEADER_SIZE, HEADER_SIZE_1_0, WAITERS_OFFSET) == (1, 112, 104, 104)


@pytest.mark.parametrize("waiters", [0, 1, 1000, 0xFFFFFFFF])
def test_c_reads_the_waiters_python_writes(tmp_path: Path, waiters_dump: Path, waiters: int) -> None:
    buffer = _page(waiters)
    assert int.from_bytes(buffer[WAITERS_OFFSET : WAITERS_OFFSET + 4], "little") == waiters  # little-endian u32
    assert buffer[WAITERS_OFFSET + 4 : HEADER_SIZE] == bytes(4)  # reserved, zero
    path = tmp_path / "page"
    path.write_bytes(buffer)
    assert _run(waiters_dump, str(path)) == f"has_waiters=1 waiters={waiters} ticks=1"
    assert waiters_offset(buffer) == WAITERS_OFFSET
    assert read_snapshot(buffer).tick_count == 1  # the count is outside the seqlock's fields


def test_a_1_0_page_is_read_by_both_and_offers_no_futex(tmp_path: Path, waiters_dump: Path) -> None:
    buffer = _page(5, old=True)
    path = tmp_path / "page"
    path.write_bytes(buffer)
    assert _run(waiters_dump, str(path)) == "has_waiters=0 waiters=0 ticks=1"
    check_header(buffer)
    assert waiters_offset(buffer) is None


@pytest.mark.parametrize(
    ("minor", "header_size", "offered"), [(1, 104, False), (0, 112, False), (1, 108, True), (9, 4096, True)]
)
def test_both_offer_the_futex_only_when_minor_and_header_size_say_so(
    tmp_path: Path, waiters_dump: Path, minor: int, header_size: int, offered: bool
) -> None:
    buffer = _page(3)
    buffer[6:8] = minor.to_bytes(2, "little")
    buffer[12:16] = header_size.to_bytes(4, "little")
    path = tmp_path / "page"
    path.write_bytes(buffer)
    assert _run(waiters_dump, str(path)).startswith(f"has_waiters={int(offered)} ")
    assert (waiters_offset(buffer) is not None) is offered


@pytest.mark.parametrize("header_size", [0, 100, 103, 4097])
def test_both_refuse_a_header_size_outside_104_to_4096(tmp_path: Path, waiters_dump: Path, header_size: int) -> None:
    buffer = _page(0)
    buffer[12:16] = header_size.to_bytes(4, "little")
    path = tmp_path / "page"
    path.write_bytes(buffer)
    assert _run(waiters_dump, str(path)) == "error -1"
    with pytest.raises(RevisionMismatch):
        check_header(buffer)
