"""What every soak suite reports: named figures, each with the goal it must meet.

A suite records each figure with `Figures.record`, prints the table with `Figures.report`, and
exits with its return value: 0 when every goal is met, 1 when one falls short.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field


@dataclass
class Figure:
    name: str
    value: object
    goal: str = ""
    met: bool = True


@dataclass
class Figures:
    """The figures of one run of a suite, in the order they were recorded."""

    suite: str
    rows: list[Figure] = field(default_factory=list)

    def record(self, name: str, value: object, goal: str = "", met: bool = True) -> None:
        """One figure; `goal` says what it must be, `met` whether it is."""
        self.rows.append(Figure(name, value, goal, met))

    @property
    def passed(self) -> bool:
        return all(row.met for row in self.rows)

    def report(self, *, as_json: bool = False) -> int:
        """Print the figures (a table, or one JSON object) and return the exit status."""
        if as_json:
            data = {row.name: row.value for row in self.rows}
            print(json.dumps({"suite": self.suite, "passed": self.passed, "figures": data}))
        else:
            width = max(len(row.name) for row in self.rows)
            print(f"== {self.suite} ==")
            for row in self.rows:
                mark = "" if not row.goal else ("  ok" if row.met else "  FAILED")
                goal = f"  (goal: {row.goal})" if row.goal else ""
                print(f"{row.name:<{width}}  {_text(row.value)}{goal}{mark}")
            print(f"== {self.suite}: {'PASS' if self.passed else 'FAIL'} ==")
        sys.stdout.flush()
        return 0 if self.passed else 1


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
