"""The tutorial's links to code point at existing lines that still hold the quoted code.

docs/tutorial.md links each equation to its implementation, e.g.
``[`features = zm * zu`](../src/deepfactor/model.py#L83)``. When the code moves, the link
rots; this test finds it. A link whose text is a code span must land on a line holding
that code; a name (``MatrixFactorization.forward``) must land on the line that defines
its last part.
"""

import re

import pytest

from conftest import REPO

TUTORIAL = REPO / "docs" / "tutorial.md"
# link text: a code span (which may hold brackets) or plain text without them
LINK = re.compile(r"\[(`[^`]+`|[^\]`]+)\]\(([^)\s]+)\)")
LINES = re.compile(r"^L(\d+)(?:-L(\d+))?$")


def relative_links():
    """(text, path, anchor) of every link of the tutorial that is not a URL."""
    for text, target in LINK.findall(TUTORIAL.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        yield text, path, anchor


LINKS = list(relative_links())


def test_the_tutorial_links_code_and_the_readme_links_the_tutorial():
    assert sum(1 for _, _, anchor in LINKS if anchor) >= 20, "the equations lost their links"
    # every link into the code is one the parser read (none hidden by odd link text)
    text = TUTORIAL.read_text(encoding="utf-8")
    assert text.count("](../src/") == sum(1 for _, path, _ in LINKS
                                           if path.startswith("../src/"))
    assert "docs/tutorial.md" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("text, path, anchor", LINKS, ids=[f"{p}#{a}" for _, p, a in LINKS])
def test_link_points_at_existing_lines_holding_the_quoted_code(text, path, anchor):
    target = (TUTORIAL.parent / path).resolve()
    assert target.exists(), f"{path} does not exist"
    if not anchor:
        return
    found = LINES.match(anchor)
    assert found, f"anchor #{anchor} is not #L<n> or #L<n>-L<m>"
    first = int(found.group(1))
    last = int(found.group(2) or first)
    lines = target.read_text(encoding="utf-8").splitlines()
    assert 1 <= first <= last <= len(lines), f"{path}#{anchor}: the file has {len(lines)} lines"
    if text.startswith("`") and text.endswith("`"):
        code = text.strip("`")
        held = "\n".join(lines[first - 1:last])
        if re.fullmatch(r"[A-Za-z_][\w.]*", code):  # a name: the line that defines it
            name = code.split(".")[-1]
            assert re.search(rf"\b(class|def) {name}\b", held), \
                f"{path}#{anchor} does not define {name!r}"
            return
        assert code in held, \
            f"{path}#{anchor} no longer holds {code!r}: run python tools/relink_tutorial.py"
