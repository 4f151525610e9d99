"""The docs site builds with ``mkdocs build --strict`` (a warning is an error) and the API page is generated."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict(tmp_path):
    from fastattn.attention import fast_attention

    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    api = (site / "api" / "index.html").read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", api))
    first_line = fast_attention.__doc__.strip().splitlines()[0]
    # the docstring as the page shows it: markup stripped, HTML entities for <, >, &
    shown = first_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert shown in text, f"the API page lacks fast_attention's docstring {first_line!r}"
    guide = (site / "guide" / "index.html").read_text()
    assert "<!-- results:speed -->" not in guide and "sdpa d64" in guide, "the guide's speed table was not filled in"
