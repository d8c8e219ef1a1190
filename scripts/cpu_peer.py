#!/usr/bin/env python3
"""dsmoe vs PyTorch on the CPU: runs benches/cpu_peer.rs and scripts/torch_peer.py alternately at
the three shapes, several rounds, and writes the median throughputs and the ratios to
perf/cpu-peer.jsonl (every run) and perf/cpu-peer.md (the table).

    python3 scripts/cpu_peer.py --python /work/venv/bin/python --rounds 3

Alternation (dsmoe, eager, compile, dsmoe, ...) spreads any load from other processes over all
three; the table records the machine, the thread count and the date. Not part of CI.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

SHAPES = {
    "tiny": "ds-moe-tiny, d128, 4 layers, 8 experts of 64, B16 x T128",
    "d256": "d256, 6 layers, 16 experts of 64, B16 x T128",
    "d512": "d512, 8 layers, 16 experts of 256, B8 x T256",
}

# Evaluation batches per measurement, the same on both sides: a tiny evaluation of 4 batches
# lasts about a tenth of a second, short enough for a scheduler hiccup to move it by 10 %; 16 of
# them last about half a second. The larger shapes' batches are long enough as they are.
EVAL_BATCHES = {"tiny": 16, "d256": 8, "d512": 4}

NOTES = "## Notes"

RERUN = """To rerun, on a machine as quiet as you can get (nothing else running; the numbers below say how
busy theirs was), from the repository root, with PyTorch in a virtual environment outside it:

```
python3 -m venv ../venv && ../venv/bin/pip install torch numpy
cargo bench --bench cpu_peer --no-run          # builds the dsmoe side once
OMP_WAIT_POLICY=passive python3 scripts/cpu_peer.py --python ../venv/bin/python --rounds 3
```

`--shapes tiny` for one shape, `--no-compile` to skip torch.compile, `--threads N` for another
thread count. The script alternates dsmoe, PyTorch eager and torch.compile runs, appends every
run to `perf/cpu-peer.jsonl` and rewrites the table below (this file's `## Notes` section is kept).
OMP_WAIT_POLICY=passive only matters on a loaded machine, where spinning OpenMP threads slow
PyTorch down many times over.

"""


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", required=True, help="a Python with torch installed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="tiny,d256,d512")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--bench-exe", help="the built cpu_peer bench executable (default: through cargo bench)")
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    os.makedirs("perf", exist_ok=True)
    log = open("perf/cpu-peer.jsonl", "a")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    load_before = os.getloadavg()[0]
    for shape in args.shapes.split(","):
        config = f"target/cpu-peer-{shape}.json"
        batches = ["--eval-batches", str(EVAL_BATCHES[shape])]
        bench = ([args.bench_exe] if args.bench_exe else ["cargo", "bench", "-q", "--bench", "cpu_peer", "--"]) + [shape] + batches
        results = {}
        for r in range(args.rounds):
            runs = [("dsmoe", bench + (["--config-out", config] if r == 0 else []))]
            peer = [args.python, "scripts/torch_peer.py", "--config", config, "--threads", str(args.threads)] + batches
            runs.append(("torch-eager", peer))
            if not args.no_compile:
                runs.append(("torch-compile", peer + ["--compile"]))
            for name, cmd in runs:
                res = run_json(cmd, env)
                res.update(round=r, commit=commit, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
                log.write(json.dumps(res) + "\n")
                log.flush()
                print(json.dumps(res), file=sys.stderr)
                results.setdefault(name, []).append(res)
        med = lambda name, key: statistics.median(x[key] for x in results[name]) if name in results and key in results[name][0] else float("nan")
        # Every throughput twice: of wall time, and of process CPU time (the `_cpu` keys).
        keys = ("train_tok_s", "eval_dense_tok_s", "eval_topk2_tok_s")
        both = lambda name: {k: (med(name, k), med(name, k.replace("_tok_s", "_cpu_tok_s"))) for k in keys}
        rows.append((shape, both("dsmoe"), both("torch-eager"), both("torch-compile")))
    torch_version = results["torch-eager"][0].get("torch", "?")
    ratio = lambda a, b: f"{a[0] / b[0]:.2f} ({a[1] / b[1]:.2f})"
    # Hand-written notes under "## Notes" in the existing file survive a rerun.
    notes = ""
    if os.path.exists("perf/cpu-peer.md"):
        old = open("perf/cpu-peer.md").read()
        # The heading on a line of its own: the rerun text above the table names it too.
        heading = "\n" + NOTES + "\n"
        notes = old[old.index(heading) + 1:] if heading in old else ""
    with open("perf/cpu-peer.md", "w") as f:
        f.write("# dsmoe vs PyTorch on the CPU\n\n")
        f.write(RERUN)
        f.write(f"{cpu_model()}, {args.threads} threads, PyTorch {torch_version}, commit {commit}, "
                f"{datetime.date.today()}; median of {args.rounds} alternated rounds; tokens/s of wall time.\n")
        f.write(f"Produced by `{' '.join(['python3', 'scripts/cpu_peer.py'] + sys.argv[1:])}`. Ratios above 1 mean dsmoe is faster; "
                "each is of wall-time throughputs, with the ratio of CPU-time throughputs (user + system time of all "
                "threads) in brackets, the steadier one on a shared machine. Load average (1 min) "
                f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end")
        if "OMP_WAIT_POLICY" in os.environ:
            f.write(f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        f.write(".\n\n")
        f.write("| shape | train dsmoe | / eager | / compile | eval dense dsmoe | / eager | eval top-k:2 dsmoe | / eager loop | top-k:2 / own dense |\n")
        f.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for shape, ds, te, tc in rows:
            tr, ed, es = (ds[k] for k in keys)
            f.write(f"| {SHAPES[shape]} | {tr[0]:.0f} | {ratio(tr, te['train_tok_s'])} | {ratio(tr, tc['train_tok_s'])} | "
                    f"{ed[0]:.0f} | {ratio(ed, te['eval_dense_tok_s'])} | {es[0]:.0f} | "
                    f"{ratio(es, te['eval_topk2_tok_s'])} | {ratio(es, ed)} |\n")
        if notes:
            f.write("\n" + notes)
    print(open("perf/cpu-peer.md").read())


if __name__ == "__main__":
    main()
