"""`status` in words and in the Prometheus text exposition format.

Pure: a `DriverStatus` (or None, for no answer) in, text out, so the wording and the metric
names are tested without a driver.

Theory of operation. The exposition is meant for node_exporter's textfile collector, which reads
`*.prom` files from one directory: a cron job or a systemd timer runs
`sharingmemory status --prometheus > DIR/sharingmemory.prom.tmp; mv DIR/sharingmemory.prom.tmp
DIR/sharingmemory.prom` (written beside and renamed, so the collector never reads half a file).
When no driver answers, the file still says so (`sharingmemory_up 0`, and nothing else, as a
scrape of a dead target gives `up 0`) and the command exits 1, so `;` and not `&&` goes before
`mv`: a driver that is down must replace the last good figures, not leave them in place.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4).
"""

from __future__ import annotations

from typing import Final

from .._defs import DriverStatus
from .display import describe_interval

#: The prefix of every metric, the project's name as Prometheus's naming guide asks.
PREFIX: Final = "sharingmemory"


def health(status: DriverStatus) -> str:
    """The driver's state in words: idle (no client has mapped the page, so there is no page and
    no timer: the driver's rest state, not a fault), running, or running with late ticks."""
    if not status.page_allocated:
        return "idle: no client has the page"
    if not status.timer_running:
        return "page allocated, timer not running"
    if status.late_ticks:
        worst = status.max_lateness_ns / 1e6
        return f"running, late ticks: {status.late_ticks} (worst {worst:.1f} ms late)"
    return "running"


def status_lines(status: DriverStatus, socket: str) -> list[str]:
    """`status`'s text form: one `name value` line each, words where a number would need the
    protocol document to read."""
    rows = [
        ("state", health(status)),
        ("socket", socket),
        ("pid", str(status.pid)),
        ("instance", status.instance_id.hex()),
        ("handles", f"{status.handles} open (this one included), {status.mapped_handles} with the page mapped"),
        ("timer", f"every {describe_interval(status.interval_ns)}, {status.ticks} ticks written"),
        ("late ticks", f"{status.late_ticks} (worst {status.max_lateness_ns / 1e6:.3f} ms)"),
    ]
    return [f"{name:12} {value}" for name, value in rows]


def _label_value(text: str) -> str:
    """A label value escaped as the text format says: backslash, double quote and newline."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, value: float | int, labels: str = "") -> list[str]:
    sample = f"{PREFIX}_{name}"
    # A counter's family is named without `_total` in TYPE/HELP lines by OpenMetrics, but the
    # 0.0.4 text format names the family after its sample; prometheus_client's parser and
    # Prometheus itself accept the sample's name, so HELP and TYPE use it too.
    return [f"# HELP {sample} {help_text}", f"# TYPE {sample} {kind}", f"{sample}{labels} {value}"]


def prometheus_text(status: DriverStatus | None, socket: str) -> str:
    """The exposition for one look at the driver at `socket`; `status` None: none answered."""
    socket_label = f'{{socket="{_label_value(socket)}"}}'
    lines = _family("up", "gauge", "1 when the driver answered IOCTL_QUERY_STATUS, 0 when none did.",
                    0 if status is None else 1, socket_label)  # fmt: skip
    if status is not None:
        info = f'{{socket="{_label_value(socket)}",pid="{status.pid}",instance="{status.instance_id.hex()}"}}'
        lines += _family("info", "gauge", "The driver answering at the socket: its pid and instance id.", 1, info)
        lines += _family("handles", "gauge", "Open handles (connections past CREATE), this one included.",
                         status.handles)  # fmt: skip
        lines += _family("mapped_handles", "gauge", "Handles that have mapped the shared page.",
                         status.mapped_handles)  # fmt: skip
        lines += _family("page_allocated", "gauge", "1 while the shared page exists (some client mapped it).",
                         int(status.page_allocated))  # fmt: skip
        lines += _family("timer_running", "gauge", "1 while the tick timer runs.", int(status.timer_running))
        lines += _family("interval_seconds", "gauge", "The tick timer's period.", status.interval_ns / 1e9)
        lines += _family("ticks_total", "counter", "Ticks written into the page by this driver instance.",
                         status.ticks)  # fmt: skip
        lines += _family("late_ticks_total", "counter", "Ticks written a whole interval or more past their deadline.",
                         status.late_ticks)  # fmt: skip
        lines += _family("max_lateness_seconds", "gauge", "The latest any tick was written, since the driver started.",
                         status.max_lateness_ns / 1e9)  # fmt: skip
    return "\n".join(lines) + "\n"
