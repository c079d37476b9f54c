"""`sharingmemory gui`: a real Tk window on a real X server (Xvfb), looked at through a screenshot.

The screenshot is taken by `xwd` (Debian's x11-apps) and decoded here: XWD is a plain header and
raw pixels, so a few lines of struct turn it into pixels to check and a PNG to look at, with no
image library. `.ci/run` installs Xvfb and x11-apps when apt can; without them these tests skip.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sharingmemory.cli.private_driver import stop_process
from tests.support import DriverProcess

# The window's colours (src/sharingmemory/_gui.py): its background, and the clock's digits.
BACKGROUND = (0x1D, 0x21, 0x27)
CLOCK = (0x7F, 0xD1, 0xE6)
SCREEN = (640, 400)

HAVE_TK = importlib.util.find_spec("tkinter") is not None
HAVE_X = shutil.which("Xvfb") is not None and shutil.which("xwd") is not None
needs_x = pytest.mark.skipif(
    not (HAVE_TK and HAVE_X),
    reason="needs tkinter in this Python and Xvfb + xwd (Debian: xvfb x11-apps; .ci/run installs them when apt works)",
)


@dataclass
class Image:
    width: int
    height: int
    rgb: bytes  # width * height * 3

    def count(self, colour: tuple[int, int, int]) -> int:
        wanted = bytes(colour)
        return sum(1 for i in range(0, len(self.rgb), 3) if self.rgb[i : i + 3] == wanted)

    def distinct_colours(self) -> int:
        return len({self.rgb[i : i + 3] for i in range(0, len(self.rgb), 3)})

    def png(self) -> bytes:
        """The image as a PNG (8-bit RGB, no filtering): signature, IHDR, IDAT, IEND."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        stride = self.width * 3
        rows = b"".join(b"\0" + self.rgb[y * stride : (y + 1) * stride] for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def read_xwd(data: bytes) -> Image:
    """Decode an XWD file of a TrueColor 24/32-bit screen (what Xvfb -screen WxHx24 makes)."""
    fields = struct.unpack_from(">25I", data, 0)
    header_size, version, pixmap_format, _depth, width, height = fields[:6]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    masks, ncolors = fields[14:17], fields[19]
    assert version == 7 and pixmap_format == 2, "an XWD ZPixmap"
    assert bits_per_pixel == 32, f"a 32-bit pixel layout, not {bits_per_pixel}"
    shifts = [(mask & -mask).bit_length() - 1 for mask in masks]
    start = header_size + 12 * ncolors
    unpack = struct.Struct("<I" if byte_order == 0 else ">I").unpack_from
    rgb = bytearray()
    for y in range(height):
        row = start + y * bytes_per_line
        for x in range(width):
            (pixel,) = unpack(data, row + 4 * x)
            rgb += bytes((pixel & mask) >> shift for mask, shift in zip(masks, shifts, strict=True))
    return Image(width, height, bytes(rgb))


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    """An Xvfb server on a display number it picks itself (-displayfd), so parallel runs and a
    display already in use never collide; stopped after the test."""
    read_end, write_end = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "{}x{}x24".format(*SCREEN), "-br", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 20
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1.0)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        if not number.strip():
            pytest.fail(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text(errors='replace')}")
        yield f":{number.decode().strip()}"
    finally:
        os.close(read_end)
        stop_process(server, 10)
        log.close()


def gui_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sharingmemory", "-v", "gui", *args]


def read_lines_until(process: subprocess.Popen[bytes], needle: bytes, times: int, timeout: float = 30) -> bytes:
    """What `process` wrote to stderr up to the `times`-th line holding `needle`."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while seen.count(needle) < times:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            pytest.fail(f"gui ended or went quiet before {times} x {needle!r}:\n{seen.decode(errors='replace')}")
        seen += chunk
    return seen


@needs_x
def test_the_window_shows_the_time_and_closes_its_handle(driver: DriverProcess, display: str, tmp_path: Path) -> None:
    env = dict(os.environ, DISPLAY=display)
    with subprocess.Popen(
        gui_command("--socket", driver.socket_path, "--count", "4"),
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        try:
            log = read_lines_until(process, b" shown: ", 2)  # one full tick after the first drawing
            shot = tmp_path / "screen.xwd"
            subprocess.run(["xwd", "-root", "-silent", "-display", display, "-out", str(shot)], check=True, timeout=30)
            assert driver.status().mapped_handles == 1  # the window's, while it is open
            assert process.stderr is not None
            log += process.stderr.read()
            assert process.wait(30) == 0, log.decode(errors="replace")
        finally:
            stop_process(process)

    image = read_xwd(shot.read_bytes())
    png = tmp_path / "kernel-timer.png"
    png.write_bytes(image.png())
    if os.environ.get("SHARINGMEMORY_SCREENSHOT"):  # keep a copy to look at
        Path(os.environ["SHARINGMEMORY_SCREENSHOT"]).write_bytes(png.read_bytes())
    assert (image.width, image.height) == SCREEN
    assert image.distinct_colours() > 10, "the screen is blank"
    assert image.count(BACKGROUND) > 20_000, "no Kernel Timer window on the screen"
    assert image.count(CLOCK) > 500, "no clock digits in the window"
    assert b"handle closed" in log
    status = driver.status()
    assert status.handles == 1  # only the handle asking
    assert status.mapped_handles == 0


@pytest.mark.skipif(not HAVE_TK, reason="needs tkinter in this Python")
def test_without_a_display_the_gui_says_so_in_one_line(driver: DriverProcess) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        gui_command("--socket", driver.socket_path),
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sharingmemory: error: cannot open a window:")
    assert driver.status().handles == 1  # it never opened the device


SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_lacks_tkinter() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = [SYSTEM_PYTHON, "-c", "import sys, importlib.util; sys.exit(sys.version_info < (3, 11) or "
             "importlib.util.find_spec('tkinter') is not None)"]  # fmt: skip
    return subprocess.run(probe, check=False, timeout=30).returncode == 0


@pytest.mark.skipif(
    not _system_python_lacks_tkinter(), reason=f"needs {SYSTEM_PYTHON} >= 3.11 without tkinter (python3-tk absent)"
)
def test_without_tkinter_the_gui_says_so_in_one_line(driver: DriverProcess) -> None:
    source = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run(
        [SYSTEM_PYTHON, "-m", "sharingmemory", "gui", "--socket", driver.socket_path],
        env=dict(os.environ, PYTHONPATH=source), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "tkinter is not available" in lines[0]
    assert "python3-tk" in lines[0]
