#!/usr/bin/env python3
"""Peak memory of CPU training against the sequence length: does it grow linearly with T?

Attention that materialises its scores keeps a [B·H, T, T] tensor per layer for the backward pass,
so its memory grows with T²; the fused attention op keeps only the output and the log-sum-exp
([B·H, T]), so the whole step's memory should grow with T. This script trains a config for a few
steps at each sequence length (the batch held fixed), reads each run's peak resident set size
(the child's own rusage, the figure `/usr/bin/time -v` prints), and prints a markdown table:
the peak, the memory each added position cost since the previous length (constant if the
growth is linear), and what a T² term of [B·H, T, T] f32 tensors per
layer (one saved score or probability tensor) would add on top.

    python3 scripts/train_memory.py --dsmoe target/release/dsmoe [--config ds-moe-tiny]
        [--lengths 128,256,512,1024,2048] [--batch 16] [--steps 3]

Not a test: it takes minutes and its numbers depend on the allocator. Runs go to a temporary
directory that is removed afterwards.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsmoe", required=True, help="the dsmoe binary")
    ap.add_argument("--config", default="ds-moe-tiny", help="a config file under configs/, by name")
    ap.add_argument("--lengths", default="128,256,512,1024,2048")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "configs", a.config + ".json")
    try:
        with open(path) as f:
            base = json.load(f)
    except OSError as e:
        sys.exit(f"train_memory: cannot read config {path}: {e}")
    m = base["model"]
    heads = m["attention"]["n_experts"] * m["attention"]["heads_per_expert"]

    rows = []
    with tempfile.TemporaryDirectory(prefix="dsmoe-train-memory-") as tmp:
        for t in [int(x) for x in a.lengths.split(",")]:
            cfg = json.loads(json.dumps(base))
            cfg["model"]["max_seq_len"] = max(t, cfg["model"]["max_seq_len"])
            cfg["train"].update(seq_len=t, batch_size=a.batch, steps=a.steps, warmup_steps=1,
                                eval_interval=10**6, checkpoint_interval=10**6)
            cfg_path = os.path.join(tmp, f"T{t}.json")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f)
            child = subprocess.Popen([a.dsmoe, "train", "--config", cfg_path, "--device", "cpu",
                                      "--no-final-eval", "--out", os.path.join(tmp, f"run{t}")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            err = child.stderr.read()
            # wait4 gives this child's own rusage: its peak, not the largest of all runs so far.
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode != 0:
                sys.exit(f"train_memory: T = {t} failed (exit {child.returncode}):\n{err[-2000:]}")
            peak_kib = usage.ru_maxrss
            rows.append((t, peak_kib / 1024))

    print(f"{a.config}, batch {a.batch}, {a.steps} steps, CPU, peak resident memory\n")
    print("| T | peak MiB | MiB per added position since the previous T | one [B·H, T, T] f32 tensor per layer would add |")
    print("|---:|---:|---:|---:|")
    prev = None
    for t, mib in rows:
        tt = a.batch * heads * t * t * 4 * m["n_layers"] / 2**20
        # Linear growth keeps this slope constant; a T² term doubles it with every doubling of T.
        slope = f"{(mib - prev[1]) / (t - prev[0]):.3f}" if prev else "-"
        print(f"| {t} | {mib:.0f} | {slope} | {tt:.0f} MiB |")
        prev = (t, mib)


if __name__ == "__main__":
    main()
