"""Move the tutorial's code links back onto the lines that hold their quoted code.

``docs/tutorial.md`` links code spans to lines, e.g.
``[`features = zm * zu`](../src/deepfactor/model.py#L83)``.
When code moves, ``tests/test_tutorial.py`` fails; this rewrites each such anchor to the
nearest line (to the old one) that holds the quoted code, keeping a range's length, and
lists the links it could not place. Run: ``python tools/relink_tutorial.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
LINK = re.compile(r"\[(`[^`]+`)\]\(([^)\s#]+)#L(\d+)(?:-L(\d+))?\)")


def holds(text: str):
    """A test of one line for the quoted code: a name's definition, or the code itself."""
    code = text.strip("`")
    if re.fullmatch(r"[A-Za-z_][\w.]*", code):
        definition = re.compile(rf"\b(class|def) {re.escape(code.split('.')[-1])}\b")
        return code, lambda line: bool(definition.search(line))
    return code, lambda line: code in line


def main() -> int:
    text = TUTORIAL.read_text(encoding="utf-8")
    unplaced = []

    def place(match: re.Match) -> str:
        label, path, last = match.group(1), match.group(2), match.group(4)
        first = int(match.group(3))
        span = int(last) - first if last else 0
        lines = (TUTORIAL.parent / path).resolve().read_text(encoding="utf-8").splitlines()
        code, held = holds(label)
        if any(held(line) for line in lines[first - 1:first + span]):
            return match.group(0)
        hits = [i + 1 for i, line in enumerate(lines) if held(line)]
        if not hits:
            unplaced.append(f"{path}: {code!r}")
            return match.group(0)
        new = min(hits, key=lambda n: abs(n - first))
        anchor = f"L{new}" + (f"-L{new + span}" if last else "")
        return f"[{label}]({path}#{anchor})"

    TUTORIAL.write_text(LINK.sub(place, text), encoding="utf-8")
    for item in unplaced:
        print("not found:", item)
    return 1 if unplaced else 0


if __name__ == "__main__":
    sys.exit(main())
