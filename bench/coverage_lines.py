"""Line and branch coverage of onefit's core from a coverage.py JSON report, and the lines no test runs.

    python -m pytest --cov=onefit --cov-branch --cov-report=json:.coverage.json   (or: make coverage)
    python bench/coverage_lines.py .coverage.json

Writes bench/results/coverage_lines.json and .md: per core module the statement and branch coverage,
the total, and every line (and partial branch) the suite leaves unrun.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CORE = ("space.py", "family.py", "dims/", "elastic/", "graph/", "importance/", "cost/counts.py", "train/",
        "tasks/", "search/", "export/", "checkpoint.py", "saved.py", "trust.py", "distill.py", "config.py")


def _ranges(lines: list[int]) -> str:
    out, start, prev = [], None, None
    for n in sorted(lines):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data = json.loads(args.report.read_text())
    rows = []
    for name, entry in sorted(data["files"].items()):
        rel = name.split("src/onefit/")[-1]
        if not rel.startswith(CORE):
            continue
        s = entry["summary"]
        rows.append({"module": rel, "statements": s["num_statements"], "missing": s["missing_lines"],
                     "branches": s.get("num_branches", 0), "partial": s.get("num_partial_branches", 0),
                     "covered_branches": s.get("covered_branches", 0),
                     "line_coverage": s["covered_lines"] / max(s["num_statements"], 1),
                     "branch_coverage": s.get("covered_branches", 0) / max(s.get("num_branches", 0), 1),
                     "missing_lines": entry["missing_lines"],
                     "missing_branches": entry.get("missing_branches", [])})
    statements = sum(r["statements"] for r in rows)
    covered = statements - sum(r["missing"] for r in rows)
    branches = sum(r["branches"] for r in rows)
    covered_branches = sum(r["covered_branches"] for r in rows)
    total = {"line_coverage": covered / max(statements, 1), "branch_coverage": covered_branches / max(branches, 1),
             "statements": statements, "branches": branches}
    result = {"command": "make coverage", "machine": platform.processor() or platform.machine(),
              "core": list(CORE), "total": total, "modules": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage_lines.json").write_text(json.dumps(result, indent=1))
    (args.out / "coverage_lines.md").write_text(render(result))
    print(f"core: {total['line_coverage']:.1%} of lines, {total['branch_coverage']:.1%} of branches")
    return result


def render(result: dict) -> str:
    t = result["total"]
    lines = ["# Test coverage of the core\n", f"`{result['command']}` (pytest-cov, branch coverage on); core: "
             f"{', '.join(result['core'])}.\n",
             f"Core: **{t['line_coverage']:.1%}** of {t['statements']:,} statements and **{t['branch_coverage']:.1%}** "
             f"of {t['branches']:,} branches run (target: branch coverage >= 90 %: "
             f"{'met' if t['branch_coverage'] >= 0.9 else 'missed'}).\n",
             "| module | statements | lines run | branches | branches run | lines no test runs |",
             "|---|---:|---:|---:|---:|---|"]
    for r in result["modules"]:
        branches = f"{r['branch_coverage']:.0%}" if r["branches"] else "—"
        lines.append(f"| {r['module']} | {r['statements']} | {r['line_coverage']:.0%} | {r['branches']} | {branches} | "
                     f"{_ranges(r['missing_lines'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
