"""What every benchmark does with its numbers: check them against the issue's targets, print a table, write JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Targets = dict[str, tuple[str, float]]  # key -> (">=" or "<=", bound)


def as_json(targets: Targets) -> dict[str, str]:
    return {key: f"{op} {bound}" for key, (op, bound) in targets.items()}


def target_rows(results: dict[str, Any], targets: Targets) -> list[tuple[str, str, str]]:
    """(key, value, 'target >= x: met' or 'NOT met') for each target."""
    rows = []
    for key, (op, bound) in targets.items():
        value = results[key]
        met = value >= bound if op == ">=" else value <= bound
        rows.append((key, f"{value}", f"target {op} {bound}: {'met' if met else 'NOT met'}"))
    return rows


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    print(title)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{value_width}}  {note}".rstrip())


def write_results(path: str | None, results: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")
