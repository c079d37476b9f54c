"""`watch` on real terminals of every size and encoding, through tmux.

tmux is a terminal emulator with a scriptable screen: `capture-pane` gives what a user would
see, and `#{history_size}` counts the lines that scrolled off the top. A frame redrawn in place
never scrolls, so the history stays empty however many ticks are shown; a frame one line too
tall for the terminal would add a line per tick (what a 40x10 terminal did before).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import DriverProcess

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian: tmux)")

TICKS = 12  # several redraws: one scrolled line per tick would be unmistakable


@contextmanager
def terminal(
    tmp_path: Path, columns: int, rows: int, command: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[list[str], int]]:
    """Run `command` in a detached tmux pane of `columns` x `rows` on a tmux server of its own,
    wait until it exits, and yield the screen's lines and how many lines scrolled off."""
    server = str(tmp_path / "tmux.sock")
    status_file = tmp_path / "status"
    variables = " ".join(f"{key}={shlex.quote(value)}" for key, value in (env or {}).items())
    # The status goes to a file, not the screen: an `echo` would itself scroll a full screen.
    script = f"env {variables} {shlex.join(command)} 2>{tmp_path / 'stderr'}; echo $? > {status_file}; sleep 600"
    tmux = ["tmux", "-S", server, "-f", "/dev/null"]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", str(columns), "-y", str(rows), "sh", "-c", script],
        check=True, timeout=30, env=dict(os.environ, TERM="xterm-256color"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (status_file.exists() and status_file.read_text().strip()):
            assert time.monotonic() < deadline, "watch did not finish"
            time.sleep(0.05)
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p"], check=True, capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
        history = subprocess.run(
            [*tmux, "display-message", "-p", "#{history_size}"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
        assert status_file.read_text().strip() == "0", (tmp_path / "stderr").read_text()
        yield screen, int(history)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=30, capture_output=True)


def watch_command(driver: DriverProcess, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sharingmemory",
        "watch",
        "--socket",
        driver.socket_path,
        "--count",
        str(TICKS),
        *args,
    ]


@pytest.mark.parametrize(("columns", "rows"), [(40, 10), (40, 9), (80, 12), (100, 15), (40, 5), (25, 3), (80, 2)])
def test_the_frame_never_scrolls(fast_driver: DriverProcess, tmp_path: Path, columns: int, rows: int) -> None:
    with terminal(tmp_path, columns, rows, watch_command(fast_driver)) as (screen, history):
        assert history == 0, f"{history} lines scrolled off:\n" + "\n".join(screen)
        text = "\n".join(screen)
        assert f"tick {TICKS}" in text or f"tick     {TICKS}" in text, text
        assert all(len(line) <= columns for line in screen)


def test_a_tall_terminal_gets_the_big_digits(fast_driver: DriverProcess, tmp_path: Path) -> None:
    with terminal(tmp_path, 80, 24, watch_command(fast_driver)) as (screen, history):
        assert history == 0
        assert sum("██" in line for line in screen) == 5, "\n".join(screen)
        assert any("● running" in line for line in screen)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
def test_a_terminal_that_cannot_show_blocks_gets_ascii(
    fast_driver: DriverProcess, tmp_path: Path, encoding: str
) -> None:
    env = {"PYTHONIOENCODING": encoding, "LANG": "C", "LC_ALL": "C"}
    with terminal(tmp_path, 80, 24, watch_command(fast_driver), env) as (screen, history):
        assert history == 0
        assert "Traceback" not in (tmp_path / "stderr").read_text()
        assert sum("##" in line for line in screen) == 5, "\n".join(screen)
        assert any("* running" in line for line in screen), "\n".join(screen)
        assert all(line.isascii() for line in screen)
