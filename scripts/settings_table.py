"""Write the settings table of README.md from townhall.config.Settings.

python scripts/settings_table.py          # rewrite README.md in place
python scripts/settings_table.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from townhall.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def table() -> str:
    rows = ["| flag | environment | default | what |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            str(default)
            if not isinstance(default, str)
            else (repr(default) if default == "" else default)
        )
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `--{name.replace('_', '-')}` | `TOWNHALL_{name.upper()}` | `{shown}` | {description} |"
        )
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md settings table is stale: run python scripts/settings_table.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
