"""``onefit run`` on every bundled example config at its full settings: the time of each stage and
what the run exported (the test metric of each file and its ONNX Runtime latency).

    python bench/run_examples.py                       # every example; bench/results/run_examples.{json,md}
    python bench/run_examples.py --examples digits     # some of them
    python bench/run_examples.py --set train.epochs=1  # overrides for a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from onefit.cost.latency import environment
from onefit.demo import EXAMPLES, example_config
from onefit.run import run

RESULTS = Path(__file__).parent / "results"


def run_example(name: str, overrides: list[str], folder: Path) -> dict:
    started = time.perf_counter()
    run(example_config(name, overrides), folder, progress=False, echo=lambda line: print(f"[{name}] {line}", flush=True))
    record = json.loads((folder / "run.json").read_text())
    manifest = json.loads((folder / "models" / "manifest.json").read_text())
    files = []
    for model in manifest["models"]:
        for f in model["files"]:
            lat = {l["batch"]: l["median_ms"] for l in model["latency"]
                   if (l["runtime"], l["precision"]) == (f["runtime"], f["precision"])}
            files.append({"model": model["name"], "chosen_for": model["chosen_for"], "params": model["params"],
                          "macs": model["macs"], "file": f["file"], "runtime": f["runtime"], "metric": f["metric"]["onnx"],
                          "cosine": f["cosine"], "latency_ms": lat})
    return {"example": name, "seconds": round(time.perf_counter() - started, 1), "metric": manifest["metric"],
            "stages": {s: {"seconds": e["seconds"], "summary": e["summary"]} for s, e in record["stages"].items()},
            "files": files}


def markdown(results: list[dict], command: str) -> str:
    lines = [f"# onefit run on the example configs\n\n`{command}`; {environment()['cpu']}, "
             f"{environment()['cores']} cores.\n"]
    for r in results:
        lines += [f"## {r['example']} ({r['seconds']:.0f} s in all)\n", "| stage | seconds | result |", "|---|---:|---|"]
        lines += [f"| {s} | {e['seconds']:.1f} | {e['summary']} |" for s, e in r["stages"].items()]
        batches = sorted({b for f in r["files"] for b in f["latency_ms"]})
        lines += ["", f"| file | chosen for | params | MACs | test {r['metric']} | parity cosine |"
                  + "".join(f" ms b={b} |" for b in batches), "|---|---|---:|---:|---:|---:|" + "---:|" * len(batches)]
        lines += [f"| {f['file']} | {', '.join(f['chosen_for'])} | {f['params']:,} | {f['macs']:,} | {f['metric']:.3f} | "
                  f"{f['cosine']:.6f} |" + "".join(f" {f['latency_ms'].get(b, float('nan')):.3f} |" for b in batches)
                  for f in r["files"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", nargs="*", default=sorted(EXAMPLES))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_example(name, args.overrides, Path(tmp) / name) for name in args.examples]
    command = "python bench/run_examples.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run_examples.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    (args.out / "run_examples.md").write_text(markdown(results, command.strip()))
    print(markdown(results, command.strip()))
    return results


if __name__ == "__main__":
    main()
