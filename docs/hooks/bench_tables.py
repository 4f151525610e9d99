"""mkdocs hook: fill the guide's result tables from the files the benchmarks write.

``<!-- results:speed -->`` becomes rows of the latest GPU run in ``benchmarks/RESULTS.md`` (the table
between its ``bench:begin`` / ``bench:end`` markers, written by ``fastattn bench table``);
``<!-- results:quality -->`` becomes the tables of ``benchmarks/out/quality.json`` (``fastattn bench
quality --json``), or a note saying how to produce it. So the docs quote the numbers, never retype them.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
QUALITY = ROOT / "benchmarks" / "out" / "quality.json"
#: Rows of the speed table the guide shows, at these lengths.
SPEED_ROWS = ("ours 1+x+x²/2 d16 v64", "fla fused_chunk_based", "ours x d64", "ours 1+x+x²/2 d64", "ours x² d64",
              "power_full deg2 d64", "sdpa d64")
SPEED_LENGTHS = ("8K", "32K", "64K")


def bench_table(text: str) -> tuple[str, list[list[str]]]:
    """(the run's "Card:" line, the rows of the first table) between the bench markers of RESULTS.md."""
    begin, end = text.find("<!-- bench:begin -->"), text.find("<!-- bench:end -->")
    if begin < 0 or end < begin:
        raise ValueError(f"{RESULTS} has no <!-- bench:begin --> ... <!-- bench:end --> block")
    lines = [ln.strip() for ln in text[begin:end].splitlines()]
    card = next((ln for ln in lines if ln.startswith("Card:")), "")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| row |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return card, rows


def speed_markdown() -> str:
    card, rows = bench_table(RESULTS.read_text())
    ms = {(r[0], r[1]): r[3] for r in rows}
    names = [n for n in SPEED_ROWS if any((n, T) in ms for T in SPEED_LENGTHS)]
    out = [card.split(" Command:")[0], "",
           "| fwd+bwd ms | " + " | ".join(SPEED_LENGTHS) + " |", "|---|" + "---|" * len(SPEED_LENGTHS)]
    out += [f"| {n} | " + " | ".join(ms.get((n, T), "–") for T in SPEED_LENGTHS) + " |" for n in names]
    return "\n".join(out)


def quality_markdown() -> str:
    if not QUALITY.is_file():
        return ("*No quality results in this checkout yet* (`benchmarks/out/quality.json` is absent). On a CUDA "
                "machine: `fastattn bench quality --quick --json benchmarks/out/quality.json --plot "
                "benchmarks/out/quality.png`.")
    data = json.loads(QUALITY.read_text())
    out = [f"From `benchmarks/out/quality.json` (device: {data.get('device')})."]
    mqar = data.get("mqar")
    if mqar:
        tests = mqar["config"]["test"]
        out += ["", "| MQAR variant | state (floats) | " + " | ".join(f"acc {t}" for t in tests) + " |",
                "|---|---|" + "---|" * len(tests)]
        for r in mqar["results"]:
            if "error" not in r:
                out.append(f"| {r['label']} | {r['state']:,} | "
                           + " | ".join(f"{r['best']['test'][t]:.3f}" for t in tests) + " |")
    lm = data.get("lm")
    if lm:
        out += ["", "| LM variant | state (floats) | validation bits/byte |", "|---|---|---|"]
        out += [f"| {r['label']} | {r['state']:,} | {r['val_bpb']:.3f} |" for r in lm["results"] if "error" not in r]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if "<!-- results:speed -->" in markdown:
        markdown = markdown.replace("<!-- results:speed -->", speed_markdown())
    if "<!-- results:quality -->" in markdown:
        markdown = markdown.replace("<!-- results:quality -->", quality_markdown())
    return markdown
