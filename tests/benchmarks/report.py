"""Where a benchmark script saves its report: ``<out>/<prefix>_<UTC timestamp>.json``; and the sizes
(full or ``--quick``) of options not given on the command line."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def save_report(out: str | Path, prefix: str, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON under ``out`` (created if needed) and return the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path}")
    return path


def fill_defaults(args: Any, defaults: dict[str, Any]) -> None:
    """Set each option named in ``defaults`` that the command line left at None (sizes whose default
    depends on ``--quick`` or a mode, so that an explicit flag still wins)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
