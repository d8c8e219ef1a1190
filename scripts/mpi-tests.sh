#!/usr/bin/env bash
# The multi-process tests: built with `--features mpi` (OpenMPI and libclang installed), run under
# `mpirun -np 2 --oversubscribe` (two ranks fit on any machine, even one core).
#
#   scripts/mpi-tests.sh
#
# - mpi_collectives: every collective of the MPI communicator against the locally computed result.
# - mpi_expert_parallel: the DS-MoE MLP with its experts split over the ranks equals the unsplit
#   layer, and the all-to-all sparse MoE MLP (tokens sent to the ranks of their experts and back)
#   the local sparse layer, forward and backward, with and without dropping.
# - data parallel: `mpirun -np 2 dsmoe train` of a micro DS-MoE matches one process with the same
#   global batch (train loss within 1e-6 relative at every step), with the gradient all-reduce
#   overlapped with the backward pass (the default); `--reduce-after-backward` gives the same bits
#   (losses, gradient norms and the final checkpoint's weights and moments), with one micro-batch
#   per step and with two (gradient accumulation).
# - expert parallel training: `--expert-parallel 2` on 2 ranks (the experts split in two) and on
#   4 ranks (a 2 x 2 grid of data and expert parallelism) match one process the same way, and so
#   does the SMoE baseline's top-2 training with its experts split over 2 ranks (all-to-all, with
#   a capacity that drops tokens). SwiGLU experts (a third matrix per expert) the same way: the
#   dense split with EP 2 and the SMoE's all-to-all with EP 2.
# - resume at another world size: a run checkpointed on 2 ranks and resumed on 1 (and the other way),
#   and one checkpointed with its experts split and resumed on 1, continue the one-process curve.
# - bad setups: ranks started with different settings fail at start with a message on every rank;
#   experts that do not split over the expert-parallel ranks are refused on every rank; a rank
#   that dies ends the job (no hang), before joining and in the middle of training, where the job
#   ends within a minute, names the dead rank, and leaves a checkpoint that resumes.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v mpirun >/dev/null || { echo "scripts/mpi-tests.sh: mpirun not found (apt-get install openmpi-bin libopenmpi-dev libclang-dev)" >&2; exit 1; }
# CI containers run as root, which OpenMPI refuses unless told.
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# The path of a test binary cargo built (the last "Executable" line naming it).
test_binary() {
    cargo test --release -p "$1" --features mpi --test "$2" --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable")][-1])'
}

echo "== MPI collectives (2 ranks)"
mpirun -np 2 --oversubscribe "$(test_binary engine mpi_collectives)"

echo "== expert-parallel MoE MLPs (dense split; all-to-all sparse) against the unsplit layers (2 ranks)"
mpirun -np 2 --oversubscribe "$(test_binary model mpi_expert_parallel)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release --features mpi --bin dsmoe
DSMOE=target/release/dsmoe

# A micro DS-MoE (2 layers, so the MI loss's batch statistics cross a layer) with a constant
# learning rate, so a run cut at step 3 and resumed to 6 follows the 6-step run exactly.
python3 - "$WORK/micro.json" <<'PY'
import json, sys
c = json.load(open("configs/ds-moe-tiny.json"))
m = c["model"]
m.update(d_model=32, n_layers=2, max_seq_len=32)
m["attention"]["head_dim"] = 8
m["mlp"]["expert_width"] = 16
c["train"].update(batch_size=4, seq_len=32, steps=6, lr=0.002, min_lr=0.002, warmup_steps=0, eval_interval=0,
                  eval_windows=2, final_eval_windows=4, checkpoint_interval=3)
json.dump(c, open(sys.argv[1], "w"), indent=1)
# The SMoE baseline at the same size, top-2 with a capacity factor of 1 (so tokens are dropped).
c = json.load(open("configs/smoe-tiny.json"))
c["model"].update(d_model=32, n_layers=2, max_seq_len=32)
c["model"]["attention"]["head_dim"] = 8
c["model"]["mlp"].update(expert_width=16, capacity_factor=1.0)
c["train"] = json.load(open(sys.argv[1]))["train"]
json.dump(c, open(sys.argv[1].replace("micro", "smoe"), "w"), indent=1)
# Both with SwiGLU experts.
for name in ("micro", "smoe"):
    c = json.load(open(sys.argv[1].replace("micro", name)))
    c["model"]["mlp"]["activation"] = "swiglu"
    json.dump(c, open(sys.argv[1].replace("micro", name + "-swiglu"), "w"), indent=1)
# Two micro-batches of 2 per step (gradient accumulation; the same global batch of 4).
c = json.load(open(sys.argv[1]))
c["train"].update(batch_size=2, grad_accum=2)
json.dump(c, open(sys.argv[1].replace("micro", "micro-accum"), "w"), indent=1)
PY
# launch NP ARGS...: dsmoe alone (NP 1) or on NP MPI ranks.
launch() { local np=$1; shift; if [ "$np" = 1 ]; then "$DSMOE" "$@"; else mpirun -np "$np" --oversubscribe "$DSMOE" "$@"; fi; }
# train OUT NP [ARGS...] / resume OUT NP STEPS: a micro run into $WORK/OUT, its output in OUT.log.
train() { local out=$1 np=$2; shift 2; launch "$np" train --config "${CONFIG:-$WORK/micro.json}" --device cpu --no-final-eval --out "$WORK/$out" "$@" >>"$WORK/$out.log" 2>&1 || { cat "$WORK/$out.log"; exit 1; }; }
resume() { local out=$1 np=$2 steps=$3; shift 3; launch "$np" train --resume --steps "$steps" --device cpu --no-final-eval --out "$WORK/$out" "$@" >>"$WORK/$out.log" 2>&1 || { cat "$WORK/$out.log"; exit 1; }; }
# same_losses A B: every step B logged has A's train loss within 1e-6 relative.
same_losses() {
    python3 - "$WORK/$1/metrics.jsonl" "$WORK/$2/metrics.jsonl" "$3" <<'PY'
import json, sys
load = lambda p: {r["step"]: r["train_loss"] for r in map(json.loads, open(p))}
want, got, what = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
assert got, f"{what}: no steps logged"
for step, loss in sorted(got.items()):
    rel = abs(loss - want[step]) / abs(want[step])
    print(f"  {what}: step {step}: {loss:.9f} vs {want[step]:.9f} (relative {rel:.1e})")
    assert rel <= 1e-6, f"{what}: step {step} differs by {rel:.2e} relative"
PY
}

# same_bits A B: B's losses and gradient norms are A's exactly, and so are its final weights and
# AdamW moments.
same_bits() {
    python3 - "$WORK/$1/metrics.jsonl" "$WORK/$2/metrics.jsonl" "$3" <<'PY'
import json, sys
load = lambda p: [(r["step"], r["train_loss"], r["grad_norm"]) for r in map(json.loads, open(p))]
want, got, what = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
assert got and got == want, f"{what}: the logged steps differ:\n{want}\n{got}"
print(f"  {what}: {len(got)} steps, losses and gradient norms identical (last loss {got[-1][1]!r})")
PY
    python3 - "$WORK/$1/$(cat "$WORK/$1/latest")" "$WORK/$2/$(cat "$WORK/$2/latest")" "$3" <<'PY'
import json, struct, sys
def tensors(path):  # name -> raw bytes (the header's metadata map has no fixed key order)
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n]); head.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in head.items()}
for f in ("model.safetensors", "optimizer.safetensors"):
    a, b = tensors(f"{sys.argv[1]}/{f}"), tensors(f"{sys.argv[2]}/{f}")
    assert a.keys() == b.keys(), f"{sys.argv[3]}: {f}: different tensors"
    bad = [k for k in a if a[k] != b[k]]
    assert not bad, f"{sys.argv[3]}: {f}: {len(bad)} tensors differ, e.g. {bad[:3]}"
print(f"  {sys.argv[3]}: final weights and AdamW moments identical, bit for bit")
PY
}

echo "== data parallel training (2 ranks, all-reduce overlapped with backward) against one process"
train single 1
train dp 2
same_losses single dp "2 ranks"
train dp-after 2 --reduce-after-backward
same_bits dp-after dp "2 ranks, overlapped vs after backward"
CONFIG=$WORK/micro-accum.json train accum-single 1
CONFIG=$WORK/micro-accum.json train accum-dp 2
same_losses accum-single accum-dp "2 ranks, 2 micro-batches"
CONFIG=$WORK/micro-accum.json train accum-dp-after 2 --reduce-after-backward
same_bits accum-dp-after accum-dp "2 ranks, 2 micro-batches, overlapped vs after backward"

echo "== expert parallel training: EP 2 (2 ranks), DP 2 x EP 2 (4 ranks) against one process"
train ep 2 --expert-parallel 2
same_losses single ep "EP 2"
train grid 4 --expert-parallel 2
same_losses single grid "DP 2 x EP 2"

echo "== SMoE top-2 training with EP 2 (2 ranks, all-to-all) against one process"
CONFIG=$WORK/smoe.json train smoe-single 1
CONFIG=$WORK/smoe.json train smoe-ep 2 --expert-parallel 2
same_losses smoe-single smoe-ep "SMoE, EP 2"

echo "== SwiGLU experts with EP 2 (2 ranks): DS-MoE's dense split, the SMoE's all-to-all"
CONFIG=$WORK/micro-swiglu.json train swiglu-single 1
CONFIG=$WORK/micro-swiglu.json train swiglu-ep 2 --expert-parallel 2
same_losses swiglu-single swiglu-ep "DS-MoE SwiGLU, EP 2"
CONFIG=$WORK/smoe-swiglu.json train smoe-swiglu-single 1
CONFIG=$WORK/smoe-swiglu.json train smoe-swiglu-ep 2 --expert-parallel 2
same_losses smoe-swiglu-single smoe-swiglu-ep "SMoE SwiGLU, EP 2"

echo "== resume at another world size"
train from-ep 2 --steps 3 --expert-parallel 2
resume from-ep 1 6
same_losses single from-ep "EP 2, resumed on 1"
train from-dp 2 --steps 3
resume from-dp 1 6
same_losses single from-dp "2 ranks, resumed on 1"
train from-single 1 --steps 3
resume from-single 2 6
same_losses single from-single "1 rank, resumed on 2"

echo "== bad setups"
# Different seeds on the two ranks: both refuse to start, naming the difference.
if mpirun -np 1 "$DSMOE" train --config "$WORK/micro.json" --device cpu --no-final-eval --out "$WORK/mismatch" --seed 1 \
    : -np 1 "$DSMOE" train --config "$WORK/micro.json" --device cpu --no-final-eval --out "$WORK/mismatch" --seed 2 >"$WORK/mismatch.log" 2>&1; then
    cat "$WORK/mismatch.log"; echo "ranks with different seeds started training" >&2; exit 1
fi
grep -q "rank 1 has a different config" "$WORK/mismatch.log" || { cat "$WORK/mismatch.log"; echo "no mismatch message" >&2; exit 1; }
[ ! -e "$WORK/mismatch/latest" ] || { echo "a mismatched run wrote a checkpoint" >&2; exit 1; }
echo "  mismatched settings: refused at start"
# 8 experts per layer over 3 expert-parallel ranks: every rank refuses, naming the numbers.
if mpirun -np 3 --oversubscribe "$DSMOE" train --config "$WORK/micro.json" --device cpu --no-final-eval --out "$WORK/indivisible" --expert-parallel 3 >"$WORK/indivisible.log" 2>&1; then
    cat "$WORK/indivisible.log"; echo "experts that do not split over 3 ranks were accepted" >&2; exit 1
fi
grep -q "8 experts per MoE layer, which do not split evenly over 3 expert-parallel ranks" "$WORK/indivisible.log" || { cat "$WORK/indivisible.log"; echo "no indivisible-experts message" >&2; exit 1; }
[ ! -e "$WORK/indivisible/latest" ] || { echo "a refused run wrote a checkpoint" >&2; exit 1; }
echo "  8 experts over 3 expert-parallel ranks: refused at start"
# Expert parallelism of a model without MoE layers is refused the same way.
python3 - "$WORK/dense.json" <<'PY'
import json, sys
c = json.load(open("configs/dense-tiny.json"))
c["train"].update(batch_size=4, seq_len=32, steps=2)
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
if mpirun -np 2 --oversubscribe "$DSMOE" train --config "$WORK/dense.json" --device cpu --no-final-eval --out "$WORK/no-moe" --expert-parallel 2 >"$WORK/no-moe.log" 2>&1; then
    cat "$WORK/no-moe.log"; echo "expert parallelism of a dense model was accepted" >&2; exit 1
fi
grep -q "has no MoE layer, so there are no experts to split over 2 ranks" "$WORK/no-moe.log" || { cat "$WORK/no-moe.log"; echo "no no-MoE message" >&2; exit 1; }
echo "  expert parallelism without MoE layers: refused at start"
# A rank that dies before joining: the job ends (non-zero) instead of waiting for it.
start=$(date +%s)
if timeout 120 mpirun -np 1 "$DSMOE" train --config "$WORK/micro.json" --device cpu --no-final-eval --out "$WORK/dead" \
    : -np 1 sh -c 'exit 3' >"$WORK/dead.log" 2>&1; then
    cat "$WORK/dead.log"; echo "the job succeeded with a dead rank" >&2; exit 1
fi
[ $(( $(date +%s) - start )) -lt 120 ] || { echo "the job hung on a dead rank" >&2; exit 1; }
echo "  a dead rank ended the job in $(( $(date +%s) - start )) s"
# A rank killed in the middle of training (SIGKILL, after some steps): mpirun ends every other rank
# at once, names the dead one, and the run directory holds only whole checkpoints: it resumes.
mpirun -np 2 --oversubscribe "$DSMOE" train --config "$WORK/micro.json" --device cpu --no-final-eval --out "$WORK/killed" --steps 100000 >"$WORK/killed.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ "$(wc -l 2>/dev/null <"$WORK/killed/metrics.jsonl" || echo 0)" -ge 4 ] && break; sleep 0.2; done
victim=$(pgrep -P "$job" -n dsmoe) || { cat "$WORK/killed.log"; echo "no rank process to kill" >&2; exit 1; }
start=$(date +%s)
kill -KILL "$victim"
code=0
timeout 60 tail --pid="$job" -f /dev/null || { kill -KILL "$job"; echo "the job hung on a rank killed mid-training" >&2; exit 1; }
wait "$job" || code=$?
[ "$code" != 0 ] || { cat "$WORK/killed.log"; echo "the job succeeded with a killed rank" >&2; exit 1; }
grep -q "exited on signal 9" "$WORK/killed.log" || { cat "$WORK/killed.log"; echo "mpirun did not name the killed rank" >&2; exit 1; }
echo "  a rank killed after $(wc -l <"$WORK/killed/metrics.jsonl") logged steps ended the job in $(( $(date +%s) - start )) s: $(grep -m1 "exited on signal 9" "$WORK/killed.log" | sed 's/^ *//')"
step=$(cat "$WORK/killed/latest")
resume killed 1 $(( 10#${step##*-} + 1 ))
echo "  its last checkpoint ($step) resumed"
