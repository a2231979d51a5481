"""Run the survivors of a mutmut run again, each against the test file written for its module, and record
the ones it kills.

``mutmut run NAME...`` reruns a mutant against every selected test that calls its function, which for the
core's most used functions is most of the selection (about a minute per survivor on 2 cores). After tests
are written for the survivors, this checks each survivor against its module's file alone, with mutmut's own
switch (the ``MUTANT_UNDER_TEST`` variable in its ``mutants/`` tree), in one pytest process per file (pytest
runs once per mutant, the imports once per file), and marks the killed ones as mutmut does (exit code 1 in
``mutants/<file>.meta``), so that ``bench/mutants_report.py`` counts them.

    python bench/mutants_recheck.py onefit.checkpoint,onefit.family=tests/test_mutants_checkpoint.py \\
        onefit.graph.coupling=tests/test_mutants_coupling.py onefit=tests/test_mutants_core.py

Each argument maps mutant-name prefixes to a test file; a survivor takes the first mapping it matches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"


def survivors() -> dict[str, Path]:
    """Every surviving mutant's name, with the meta file that records it."""
    found = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code == 0:
                found[name] = meta
    return found


def worker(test: str, names: list[str]) -> None:
    """In the mutants tree: pytest on ``test`` once per mutant; prints ``KILLED name`` or ``SURVIVED name``."""
    import pytest

    os.chdir(MUTANTS)
    sys.path.insert(0, str(MUTANTS / "src"))
    for name in ["", *names]:
        os.environ["MUTANT_UNDER_TEST"] = name
        code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=", test])
        if name == "" and code != 0:
            print(f"FAILS-CLEAN {test}", flush=True)
            return
        if name:
            print(f"{'KILLED' if code in (1, 3) else 'SURVIVED'} {name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", nargs="+", help="PREFIX[,PREFIX...]=tests/FILE.py")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], json.loads(Path(args.worker[1]).read_text()))
        return 0
    maps = [(tuple(prefixes.split(",")), test) for prefixes, test in (m.split("=", 1) for m in args.maps)]
    found = survivors()
    groups: dict[str, list[str]] = {}
    for name in found:
        test = next((t for prefixes, t in maps if name.startswith(tuple(p + "." for p in prefixes))), None)
        if test is not None:
            groups.setdefault(test, []).append(name)
    for test in groups:  # the mutants tree has its own copy of the tests
        shutil.copy(ROOT / test, MUTANTS / test)
    work = ROOT / "mutants" / "recheck"
    work.mkdir(exist_ok=True)

    def run(item) -> list[str]:
        test, names = item
        listing = work / (Path(test).stem + ".json")
        listing.write_text(json.dumps(names))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(MUTANTS / "src")}
        done = subprocess.run([sys.executable, __file__, "x=y", "--worker", test, str(listing)], env=env,
                              capture_output=True, text=True)
        return [ln for ln in done.stdout.splitlines() if ln.startswith(("KILLED ", "SURVIVED ", "FAILS-CLEAN "))]

    with ThreadPoolExecutor(2) as pool:
        lines = [ln for result in pool.map(run, groups.items()) for ln in result]
    for line in (ln for ln in lines if ln.startswith("FAILS-CLEAN")):
        print(f"{line.split()[1]} fails without a mutant: fix it first", file=sys.stderr)
        return 1
    killed = [ln.split()[1] for ln in lines if ln.startswith("KILLED ")]
    for meta in {found[n] for n in killed}:
        data = json.loads(meta.read_text())
        data["exit_code_by_key"].update({n: 1 for n in killed if found[n] == meta})
        meta.write_text(json.dumps(data, indent=4))
    for test, names in groups.items():
        print(f"{test}: {sum(n in set(killed) for n in names)} of {len(names)} survivors killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
