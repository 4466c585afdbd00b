"""The README as a front door: short, its links resolve (and the docs' too), and its library example runs as written.

The example runs offline (tests/conftest.py sets HF_HUB_OFFLINE=1) on the embedded demo model; the only changes made
to it are the substitutions listed in `test_the_readme_library_example_runs`, each checked to be there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").count("\n")  # as `wc -l` counts, the front matter included
    assert lines <= MAX_LINES, f"README.md has {lines} lines; move the details to docs/"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_and_docs_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks and code spans hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert targets or page != README, "README.md links to nothing?"
    missing = [t for t in targets if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
    for target in targets:  # a section of a Markdown page: one of its headings, as GitHub names them
        path, _, anchor = target.partition("#")
        if anchor and path.endswith(".md"):
            assert anchor in anchors(page.parent / path), f"{page.relative_to(ROOT)}: no section {target}"


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    """The README's `import lrm` example, as written there but for these substitutions: the embedded demo model for
    the Hub model, an example picture, a temporary output folder, and small sizes (a 64³ mesh, 4 views of 64 px, a
    256² texture)."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # (tests/conftest.py): the example cannot reach the network
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(import lrm\n.*?)```", text, re.S).group(1)
    substitutions = {
        '"zxhezexin/openlrm-mix-base-1.1"': '"lrm-demo-shapes"',
        '"object.png"': repr(str(ROOT / "examples" / "cone.png")),
        '"outputs"': repr(str(tmp_path / "outputs")),
        "mesh_resolution=256": "mesh_resolution=64",
        "n_views=60": "n_views=4",
        "video_size=256": "video_size=64",
        "texture_size=2048": "texture_size=256",
        "orbit_cameras(8), 256)": "orbit_cameras(4), 64)",
    }
    for old, new in substitutions.items():
        assert code.count(old) == 1, f"the README's library example no longer has {old} once"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # nothing is written anywhere else
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (our own README)

    import lrm
    result, frames = scope["result"], scope["frames"]
    assert isinstance(result, lrm.Reconstruction)
    suffixes = {"png": "_input.png", "glb": ".glb", "obj": ".obj", "mtl": ".mtl", "texture": "_texture.png",
                "ply": ".ply", "mp4": ".mp4"}
    assert set(result.files) == set(suffixes)
    for key, path in result.files.items():
        assert path.parent == tmp_path / "outputs" and path.name == "object" + suffixes[key], (key, path)
        assert path.is_file() and path.stat().st_size > 0, path
    assert set(result.timings) == set(lrm.STAGES) and not result.problems
    assert len(result.mesh.faces) > 100 and len(result.asset.faces) > 100
    assert result.asset.visual.kind == "texture"
    assert tuple(frames.shape) == (4, 3, 64, 64)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and float(frames.std()) > 0.01  # not a blank picture
    assert "triangles" in result.summary()
