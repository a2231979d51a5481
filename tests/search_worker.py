"""One search worker of the shared-study tests (``tests/test_shared_search.py``) and
``bench/scale.py``:

    python tests/search_worker.py URL OUT.json --budget 60 [--seed S] [--searcher nsga2]
        [--seconds 0.05] [--hang-after K] [--timeout 2] [--study NAME]

Searches a small two-objective problem (192 archs) whose evaluation takes ``--seconds``, on the
study at URL shared with other workers, and writes what it evaluated and the front it returned.
``--hang-after K``: the K+1-th evaluation writes OUT.json.hung and never returns (to be killed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from onefit.search import SEARCHERS, Metric, Problem, search
from onefit.space import Dimension, Space


def problem(seconds: float, hang_after: int | None, hung: Path) -> tuple[Problem, list]:
    space = Space([Dimension("a", "width", tuple(range(1, 9))), Dimension("b", "depth", tuple(range(1, 7))),
                   Dimension("c", "bits", (4, 8, 16, 32))])
    evaluated: list[dict] = []

    def loss(arch) -> float:
        if hang_after is not None and len(evaluated) >= hang_after:
            hung.write_text(json.dumps(arch))
            time.sleep(3600)
        evaluated.append(dict(arch))
        time.sleep(seconds)
        return 1.0 / (arch["a"] * arch["b"]) + (0.05 if arch["c"] == 4 else 0.0)

    def size(arch) -> float:
        return arch["a"] * arch["b"] * arch["c"] / 8

    return Problem(space, {"loss": Metric(loss), "size": Metric(size, cheap=True)}, ("loss", "size")), evaluated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--searcher", default="nsga2")
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--hang-after", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--study", default="onefit")
    args = parser.parse_args()
    made, evaluated = problem(args.seconds, args.hang_after, args.out.with_suffix(".hung"))
    started = time.perf_counter()
    front = search(made, SEARCHERS[args.searcher](seed=args.seed), budget=args.budget, storage=args.url,
                   study_name=args.study, share=True, claim_timeout_s=args.timeout, progress=False)
    args.out.write_text(json.dumps({"evaluated": evaluated, "front": [t.arch for t in front.trials],
                                    "study_trials": len(front.evaluated), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
