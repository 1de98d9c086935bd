"""What every evaluation mode leaves behind: a markdown table on the console, and
``EVAL_DIR/<mode>-<dataset>-split<N>.json`` and ``.md``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from beray import storage


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    mode: str
    title: str
    headers: list[str]
    rows: list[list]
    data: dict  # the JSON: every number of the table and what produced it
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # pictures written beside the JSON

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", markdown_table(self.headers, self.rows)]
        if self.notes:
            parts += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def write(self, eval_dir: str | Path, stem: str) -> tuple[str, str]:
        """``EVAL_DIR/STEM.json`` and ``.md``, a local folder or a URI; returns their names."""
        js, md = (storage.join(str(eval_dir), f"{stem}.{ext}") for ext in ("json", "md"))
        storage.write_text(js, json.dumps({"mode": self.mode, **self.data, "files": self.files}, indent=2,
                                          default=str) + "\n")
        storage.write_text(md, self.markdown())
        return js, md
