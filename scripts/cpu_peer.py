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
        bench = ([args.bench_exe] if args.bench_exe else ["cargo", "bench", "-q", "--bench", "cpu_peer", "--"]) + [shape]
        results = {}
        for r in range(args.rounds):
            runs = [("dsmoe", bench + (["--config-out", config] if r == 0 else []))]
            peer = [args.python, "scripts/torch_peer.py", "--config", config, "--threads", str(args.threads)]
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
        med = lambda name, key: statistics.median(x[key] for x in results[name]) if name in results else float("nan")
        ds = {k: med("dsmoe", k) for k in ("train_tok_s", "eval_dense_tok_s", "eval_topk2_tok_s")}
        rows.append((shape, ds, med("torch-eager", "train_tok_s"), med("torch-compile", "train_tok_s"), med("torch-eager", "eval_dense_tok_s"), med("torch-eager", "eval_topk2_tok_s")))
    torch_version = results["torch-eager"][0].get("torch", "?")
    with open("perf/cpu-peer.md", "w") as f:
        f.write("# dsmoe vs PyTorch on the CPU\n\n")
        f.write(f"{cpu_model()}, {args.threads} threads, PyTorch {torch_version}, commit {commit}, "
                f"{datetime.date.today()}; median of {args.rounds} alternated rounds; tokens/s.\n")
        f.write("Produced by `python3 scripts/cpu_peer.py --python VENV/bin/python --rounds "
                f"{args.rounds}`. Ratios above 1 mean dsmoe is faster. Load average (1 min) "
                f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end")
        if "OMP_WAIT_POLICY" in os.environ:
            f.write(f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        f.write(".\n\n")
        f.write("| shape | train dsmoe | / eager | / compile | eval dense dsmoe | / eager | eval top-k:2 dsmoe | / eager loop | top-k:2 / own dense |\n")
        f.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for shape, ds, te, tc, ed, es in rows:
            f.write(f"| {SHAPES[shape]} | {ds['train_tok_s']:.0f} | {ds['train_tok_s'] / te:.2f} | {ds['train_tok_s'] / tc:.2f} | "
                    f"{ds['eval_dense_tok_s']:.0f} | {ds['eval_dense_tok_s'] / ed:.2f} | {ds['eval_topk2_tok_s']:.0f} | "
                    f"{ds['eval_topk2_tok_s'] / es:.2f} | {ds['eval_topk2_tok_s'] / ds['eval_dense_tok_s']:.2f} |\n")
    print(open("perf/cpu-peer.md").read())


if __name__ == "__main__":
    main()
