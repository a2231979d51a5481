"""Mutation score of onefit's core, from mutmut's results in mutants/: writes bench/results/mutants.{md,json}.

Run after ``mutmut run`` (``make mutants`` does both). A mutant counts as killed when a test fails on it, times out
or crashes on it (mutmut's killed, timeout, segfault); it survives when every test that calls the mutated function
passes. Survivors that cannot be killed (the mutant computes the same thing) are listed in ``EQUIVALENT`` with the
reason, and the score is given both with them counted as survivors and with them left out.

    python bench/mutants_report.py [--seconds WALL] [--command CMD]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
DEFAULT_COMMAND = "make mutants  (OMP_NUM_THREADS=1 mutmut run --max-children 2, then this script)"

# mutmut's exit codes (mutmut/stats.py) grouped into what the score needs.
DETECTED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
            -11: "segfault", -9: "segfault", 37: "caught by type check"}
SURVIVED = {0: "survived"}
UNTESTED = {5: "no tests", 33: "no tests"}

# Survivors that no test can kill, with the reason: mutant name -> why it computes the same thing as the original.
EQUIVALENT: dict[str, str] = {
    'onefit.search.nsga2.x_crowding__mutmut_4':
        '`n < 2` for `n <= 2`: with two points the loop also gives both the infinite boundary distance',
    'onefit.search.nsga2.x_crowding__mutmut_17':
        '`kind="STABLE"`: numpy reads the sort kind case-insensitively',
    'onefit.search.nsga2.x_survival_order__mutmut_35':
        '`kind="STABLE"`: numpy reads the sort kind case-insensitively',
    'onefit.search.nsga2.x_survival_order__mutmut_11':
        'moocore.pareto_rank of an empty array is an empty array, as the else branch',
    'onefit.search.nsga2.x_survival_order__mutmut_14':
        'the dtype of an empty rank array is never used (no front to loop over, lexsort of empties)',
    'onefit.search.nsga2.x_survival_order__mutmut_16':
        'the dtype of an empty rank array is never used (no front to loop over, lexsort of empties)',
    'onefit.search.nsga2.x_make_offspring__mutmut_23':
        '`<=` for `<` against rng.random(): differs only when it returns exactly 0.5 (probability 2^-53)',
    'onefit.search.nsga2.x_make_offspring__mutmut_29':
        '`<=` for `<` against rng.random(): differs only when it returns exactly the crossover rate',
    'onefit.search.nsga2.x_make_offspring__mutmut_35':
        '`<=` for `<` against rng.random(): differs only when it returns exactly the mutation rate',
    'onefit.search.nsga2.x_make_offspring__mutmut_43':
        '`<=` for `<` against rng.random(): differs only when it returns exactly 0.8',
    'onefit.search.nsga2.x_make_offspring__mutmut_33':
        "`size >= 1`: a one-choice dimension's step is clipped back to its only choice; only extra random draws",
    'onefit.search.nsga2.xǁNSGA2Searchǁask__mutmut_2':
        '1001 for 1000 tries: matters only after a thousand repeats in a row',
    'onefit.search.nsga2.xǁNSGA2Searchǁ_exhausted__mutmut_1':
        '`>` for `>=`: once every arch is asked, ask() still returns a repeat, after more draws',
    'onefit.search.nsga2.xǁNSGA2Searchǁparents__mutmut_6':
        'Trial.values are floats: numpy infers float64 anyway',
    'onefit.search.nsga2.xǁNSGA2Searchǁparents__mutmut_8':
        'Trial.values are floats: numpy infers float64 anyway',
    'onefit.search.nsga2.xǁNSGA2Searchǁ_next_generation__mutmut_26':
        'ask() skips asked archs again, so a stale `seen` only costs draws',
    'onefit.search.nsga2.xǁNSGA2Searchǁ_next_generation__mutmut_39':
        'ask() skips asked archs again, so a duplicate in the queue only costs a draw',
    'onefit.search.pareto.xǁFrontǁhypervolume__mutmut_17':
        'the reference is divided as float either way ((values - low) / (high - low) is float)',
    'onefit.search.pareto.xǁFrontǁhypervolume__mutmut_19':
        'the reference is divided as float either way ((values - low) / (high - low) is float)',
    'onefit.search.pareto.xǁFrontǁsave_json__mutmut_10':
        'indent 2 for 1: only the whitespace of the saved file changes',
    'onefit.train.quantized.xǁQuantizedDistillationRecipeǁ_soft_targets__mutmut_16':
        'grad mode on for a teacher that is not trained: nothing is backpropagated from it, so the gradients are the same',
    'onefit.dims.base.x_register_kind__mutmut_4':
        "getattr default None for (): both are falsy, so a class without names is refused the same way",
}

# More of them, one JSON object {mutant: reason} (the survivors of the run over coupling.py, onnx.py and the
# later core files, judged one by one).
EQUIVALENT_FILE = Path(__file__).with_name("mutants_equivalent.json")
if EQUIVALENT_FILE.exists():
    EQUIVALENT.update(json.loads(EQUIVALENT_FILE.read_text()))


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    for table in (DETECTED, SURVIVED, UNTESTED):
        if code in table:
            return table[code]
    return {2: "interrupted", 34: "skipped"}.get(code, "suspicious")


def modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    patterns = config["only_mutate"]
    found = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py"))
    return [p for p in found if any(fnmatch(p, pat) for pat in patterns)]


def diff_of(name: str, path: str) -> str:
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        return get_diff_for_mutant(name, path=path)
    except Exception as e:  # noqa: BLE001 - the report still lists the mutant without its diff
        return f"(no diff: {type(e).__name__}: {e})"


def short_diff(diff: str) -> str:
    """The changed lines of a unified diff, without the file headers."""
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines) or diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="wall time of the mutmut run")
    parser.add_argument("--command", default=DEFAULT_COMMAND)
    parser.add_argument("--note", default="", help="a paragraph to add under the title (e.g. how the run ended)")
    args = parser.parse_args()

    per_module, survivors, untested = {}, [], []
    for path in modules():
        meta = ROOT / "mutants" / (path + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter(status(c) for c in codes.values())
        detected = sum(counts[s] for s in set(DETECTED.values()))
        equivalent = [n for n, c in codes.items() if c in SURVIVED and n in EQUIVALENT]
        for name, code in sorted(codes.items()):
            if code in SURVIVED:
                survivors.append({"module": path, "mutant": name, "equivalent": EQUIVALENT.get(name),
                                  "diff": short_diff(diff_of(name, path))})
            elif code in UNTESTED:
                untested.append({"module": path, "mutant": name, "diff": short_diff(diff_of(name, path))})
        total = len(codes) - counts["not checked"]  # mutants the run reached
        per_module[path] = {**{k: v for k, v in sorted(counts.items())},  # mutmut's statuses, then the score
                            "total": total, "generated": len(codes), "killed": detected, "equivalent": len(equivalent),
                            "score": detected / total if total else None, "score_without_equivalent":
                                detected / (total - len(equivalent)) if total > len(equivalent) else None}

    if not per_module:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 1
    total = sum(m["total"] for m in per_module.values())
    killed = sum(m["killed"] for m in per_module.values())
    equivalent = sum(m["equivalent"] for m in per_module.values())
    if not total:
        print("mutmut has not run any mutant yet", file=sys.stderr)
        return 1
    summary = {"command": args.command, "wall_seconds": args.seconds, "total": total, "killed": killed,
               "equivalent": equivalent, "score": killed / total,
               "score_without_equivalent": killed / (total - equivalent) if total > equivalent else 1.0,
               "modules": per_module, "survivors": survivors, "no_tests": untested}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mutants.json").write_text(json.dumps(summary, indent=2) + "\n")

    md = ["# Mutation testing of the core", "",
          f"Made by `{args.command}`" + (f" in {args.seconds / 60:.0f} min of wall time" if args.seconds else "")
          + " (mutmut 3; the modules and the test selection are `[tool.mutmut]` in pyproject.toml).", "",
          *([args.note, ""] if args.note else []),
          "A mutant is killed when a selected test fails, times out or crashes on it; mutmut runs, for each mutant, "
          "only the selected tests that call the mutated function. Scores are over the mutants the run reached "
          "(*tested*); *not reached* counts those it had not run yet.", "",
          f"**Total: {killed} / {total} killed ({100 * killed / total:.1f} %)**; "
          f"{equivalent} survivors are equivalent mutants (listed below with the reason); without them "
          f"{killed} / {total - equivalent} ({100 * summary['score_without_equivalent']:.1f} %).", "",
          "| module | killed | tested | score | survived | equivalent | no tests | timeout | not reached |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path, m in per_module.items():
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        md.append(f"| `{path}` | {m['killed']} | {m['total']} | {score} | {m.get('survived', 0)} | "
                  f"{m['equivalent']} | {m.get('no tests', 0)} | {m.get('timeout', 0)} | {m.get('not checked', 0)} |")
    md.append(f"| **all** | **{killed}** | **{total}** | **{100 * killed / total:.1f} %** | "
              f"{sum(m.get('survived', 0) for m in per_module.values())} | {equivalent} | "
              f"{sum(m.get('no tests', 0) for m in per_module.values())} | "
              f"{sum(m.get('timeout', 0) for m in per_module.values())} | "
              f"{sum(m.get('not checked', 0) for m in per_module.values())} |")
    for title, rows, equiv in (("Equivalent survivors", [s for s in survivors if s["equivalent"]], True),
                               ("Surviving mutants", [s for s in survivors if not s["equivalent"]], False),
                               ("Mutants no selected test reaches", untested, False)):
        md += ["", f"## {title} ({len(rows)})", ""]
        if not rows:
            md.append("None.")
        for row in rows:
            md.append(f"- `{row['mutant']}`" + (f": {row['equivalent']}" if equiv else ""))
            md += ["  ```diff", *("  " + ln for ln in row["diff"].splitlines()), "  ```"]
    (OUT / "mutants.md").write_text("\n".join(md) + "\n")
    print(f"mutation score {killed}/{total} = {100 * killed / total:.1f} % -> {OUT / 'mutants.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
