"""The Kernel Timer window closes with its Close button, Esc and Ctrl-Q, on a real X server.

Keys and the click are real X input from xdotool (XTEST), to the window found by its class;
the button is found in a screenshot by its colour, so the test clicks where a user would.
Each way must close the handle as the window manager's close box does: exit 0, "handle closed",
and the driver left with no mapped handle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_gui import HAVE_TK, HAVE_X, display, gui_command, read_lines_until, read_xwd
from tests.support import DriverProcess, wait_for

__all__ = ["display"]  # the fixture, used by name below

BUTTON = (0x3B, 0x44, 0x52)  # cli/gui.py _BUTTON

pytestmark = pytest.mark.skipif(
    not (HAVE_TK and HAVE_X and shutil.which("xdotool")),
    reason="needs tkinter, Xvfb + xwd and xdotool (Debian: xvfb x11-apps xdotool)",
)


def xdotool(display_name: str, *args: str) -> str:
    return subprocess.run(
        ["xdotool", *args], env=dict(os.environ, DISPLAY=display_name),
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip


def button_centre(display_name: str, tmp_path: Path) -> tuple[int, int]:
    """Where the Close button is drawn, found by its colour. The first tick is logged when the
    window is updated, which can be before the X server has painted it: screenshots are taken
    until the button shows, for up to 10 s."""
    shot = tmp_path / "screen.xwd"
    wanted = bytes(BUTTON)
    deadline = time.monotonic() + 10
    while True:
        subprocess.run(["xwd", "-root", "-silent", "-display", display_name, "-out", str(shot)], check=True, timeout=30)
        image = read_xwd(shot.read_bytes())
        points = [
            (i // 3 % image.width, i // 3 // image.width)
            for i in range(0, len(image.rgb), 3)
            if image.rgb[i : i + 3] == wanted
        ]
        if len(points) > 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(points) > 200, "no Close button on the screen"
    return sum(x for x, _ in points) // len(points), sum(y for _, y in points) // len(points)


@contextlib.contextmanager
def _window(driver: DriverProcess, display: str) -> Iterator[tuple[subprocess.Popen[bytes], str, bytes]]:
    """`sharingmemory gui` on `display`, once it has shown its first tick: the process, its
    X window id, and its stderr so far. Killed on the way out if the body left it open."""
    env = dict(os.environ, DISPLAY=display)
    with subprocess.Popen(
        gui_command("--socket", driver.socket_path),
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        try:
            log = read_lines_until(process, b" shown: ", 1)
            window = xdotool(display, "search", "--sync", "--onlyvisible", "--class", "sharingmemory").split()[0]
            yield process, window, log
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("how", ["Escape", "ctrl+q", "ctrl+shift+q", "button"])
def test_the_window_closes_and_closes_its_handle(driver: DriverProcess, display: str, tmp_path: Path, how: str) -> None:
    with _window(driver, display) as (process, window, shown):
        if how == "button":
            x, y = button_centre(display, tmp_path)
            xdotool(display, "mousemove", "--sync", str(x), str(y), "click", "1")
        else:
            xdotool(display, "windowfocus", "--sync", window)
            xdotool(display, "key", "--clearmodifiers", how)
        assert process.wait(30) == 0
        assert process.stderr is not None
        log = shown + process.stderr.read()
    text = log.decode(errors="replace")
    expected = {"Escape": "Esc", "ctrl+q": "Ctrl-Q", "ctrl+shift+q": "Ctrl-Q", "button": "the Close button"}[how]
    assert f"window closed by {expected}" in text, text
    assert "handle closed" in text
    assert wait_for(lambda: driver.status().mapped_handles == 0)


def test_other_keys_leave_it_open(driver: DriverProcess, display: str) -> None:
    with _window(driver, display) as (process, window, _log):
        xdotool(display, "windowfocus", "--sync", window)
        for key in ("q", "Q", "ctrl+w", "alt+q", "space", "Return"):
            xdotool(display, "key", "--clearmodifiers", key)
        read_lines_until(process, b" shown: ", 1)  # a tick after the keys: still open
        assert process.poll() is None
        assert driver.status().mapped_handles == 1
        xdotool(display, "key", "--clearmodifiers", "Escape")
        assert process.wait(30) == 0
