"""Publish the machine's load, memory and hwmon temperatures as the section `system`.

Many status bars (and their widgets: load, memory, temperatures) each parse /proc and /sys
every second. With this producer running, they read one sealed page from memory instead:

    python examples/producers/system.py                   # every second, until interrupted
    sharingmemory read system                             # one look
    sharingmemory list --json                             # what is published, by whom

The temperatures are the hwmon sensors present at start (/sys/class/hwmon/hwmon*/temp*_input,
millidegrees Celsius, see the kernel's Documentation/hwmon/sysfs-interface.rst); a sensor that
vanishes later reads NaN. Needs a driver that allows this uid to produce
(`sharingmemory serve --allow-producer-uid UID`; root and the driver's own uid always may).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import sharingmemory

_MEMINFO_KEYS = {"MemTotal": "mem_total", "MemAvailable": "mem_available", "SwapTotal": "swap_total",
                 "SwapFree": "swap_free"}  # fmt: skip


def hwmon_sensors(root: Path = Path("/sys/class/hwmon")) -> dict[str, Path]:
    """{field name: temp*_input path} for every temperature sensor present now."""
    sensors: dict[str, Path] = {}
    for chip in sorted(root.glob("hwmon*")):
        try:
            chip_name = (chip / "name").read_text().strip()
        except OSError:
            continue
        for sensor in sorted(chip.glob("temp*_input")):
            label = re.sub(r"[^A-Za-z0-9_]", "_", f"{chip_name}_{sensor.name.removesuffix('_input')}")
            name = f"temp_{label}"[:64]
            if name not in sensors:
                sensors[name] = sensor
    return sensors


def fields(sensors: dict[str, Path]) -> list[sharingmemory.Field]:
    result = [
        sharingmemory.Field("load1", "f64", doc="load average over 1 minute (/proc/loadavg)"),
        sharingmemory.Field("load5", "f64", doc="load average over 5 minutes"),
        sharingmemory.Field("load15", "f64", doc="load average over 15 minutes"),
        sharingmemory.Field("runnable", "u32", doc="runnable scheduling entities"),
    ]
    result += [sharingmemory.Field(name, "u64", unit="KiB", doc=f"{key} of /proc/meminfo") for key, name in
               _MEMINFO_KEYS.items()]  # fmt: skip
    result += [sharingmemory.Field(name, "f64", unit="celsius", doc=str(path)) for name, path in sensors.items()]
    return result


def sample(sensors: dict[str, Path]) -> dict[str, object]:
    """One reading of everything, as publish() keywords."""
    load1, load5, load15, entities = Path("/proc/loadavg").read_text().split()[:4]
    values: dict[str, object] = {
        "load1": float(load1), "load5": float(load5), "load15": float(load15),
        "runnable": int(entities.split("/")[0]),
    }  # fmt: skip
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _MEMINFO_KEYS:
            values[_MEMINFO_KEYS[key]] = int(rest.split()[0])
    for name, path in sensors.items():
        try:
            values[name] = int(path.read_text()) / 1000
        except (OSError, ValueError):
            values[name] = math.nan
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="system", help="the section's name (default: system)")
    parser.add_argument("--socket", default=sharingmemory.DEVICE_NAME, help="the driver's socket")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between updates (default 1)")
    parser.add_argument("--count", type=int, default=0, help="stop after COUNT updates (default: never)")
    args = parser.parse_args(argv)
    sensors = hwmon_sensors()
    try:
        with sharingmemory.open_device(args.socket, "rw") as device:
            section = device.create_section(args.name, fields(sensors))
            published = 0
            while not args.count or published < args.count:
                section.publish(**sample(sensors))
                published += 1
                # Sleep to the next multiple of the interval: readers see updates on the beat.
                time.sleep(args.interval - time.time() % args.interval)
    except sharingmemory.NtStatusError as err:
        print(f"system.py: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
