#!/usr/bin/env bash
# Builds every test and bench binary here and packs them, with a run script, into .gpu-bundle/
# (gitignored), so a GPU machine with no Rust toolchain runs them all in one command:
#
#   scripts/gpu-run.sh bundle                  # here: build, strip, pack (the bundle stays < 64 MiB)
#   bash .gpu-bundle/run.sh [tests|benches|all] [NAME_FILTER]   # there, from the repository root
#
# (.gpu-bundle is ignored by git: the device run call must name it in `carry`.)
#
# On the GPU machine run.sh runs every test binary (its output in $OUT/logs/test-<name>.log), then
# every bench binary with `--bench` (logs in $OUT/logs/bench-<name>.log), and the benches append
# their measurements to $OUT/perf/results.jsonl (DSMOE_RESULTS); copy that file's lines into
# perf/results.jsonl here and run scripts/perf-table.py. A table of pass/fail per binary is printed
# last. NAME_FILTER (a substring of a binary's name) runs only those binaries.
#
# How run.sh finds the CUDA libraries (nothing is bundled: libnvrtc alone is 105 MB):
#   - libcuda: from the driver, through the dynamic loader's usual paths; /usr/local/nvidia/lib64
#     and /usr/lib/x86_64-linux-gnu are added to LD_LIBRARY_PATH when they exist.
#   - libnvrtc.so.13 (kernels are compiled at run time) and libcublas.so.13 (bench baselines):
#     $DSMOE_CUDA_LIB_DIRS (colon-separated) if set; else the nvidia-cuda-nvrtc / nvidia-cublas
#     wheels of the machine's python3 (site-packages/nvidia/cu13/lib, or nvidia/*/lib for CUDA 12
#     wheels); else $CUDA_HOME/lib64 and /usr/local/cuda/lib64.
#   The compiled kernels are cached in $DSMOE_KERNEL_CACHE (default /tmp/dsmoe-kernels).
#
# The binaries were built with this checkout's path (/work/main) compiled in (CARGO_MANIFEST_DIR:
# tests read configs/ and data/ through it), so run.sh makes /work/main point at the repository
# copy it runs in when that path does not exist there.
set -euo pipefail
SELF_DIR=$(cd "$(dirname "$0")" && pwd)
cd "$SELF_DIR/.."

bundle() {
    local out=.gpu-bundle
    rm -rf "$out"
    mkdir -p "$out/bin"
    local list
    list=$(mktemp)
    # Test binaries of every workspace crate, then the benches, as cargo reports them.
    cargo test --release --workspace --no-run --message-format=json >"$list.tests"
    cargo bench --no-run --message-format=json >"$list.benches"
    python3 - "$list.tests" "$list.benches" "$out/bin" <<'PY'
import json, os, shutil, sys
tests, benches, dest = sys.argv[1:4]
seen = set()
for kind, path in (("test", tests), ("bench", benches)):
    for line in open(path):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        exe = msg.get("executable")
        if msg.get("reason") != "compiler-artifact" or not exe:
            continue
        target = msg["target"]
        pid = msg["package_id"]
        frag = pid.split("#", 1)[-1]
        pkg = frag.split("@")[0] if "@" in frag else pid.split("#")[0].rstrip("/").rsplit("/", 1)[-1]
        # The CLI binary itself: its tests run it from target/release (CARGO_BIN_EXE_*).
        if kind == "test" and "bin" in target["kind"] and not msg.get("profile", {}).get("test"):
            name = f"exe-{target['name']}"
            if name not in seen:
                seen.add(name)
                shutil.copy2(exe, os.path.join(dest, name))
                print(name)
            continue
        # Tests: every libtest harness (unit and integration); benches: the bench targets
        # (criterion's run without libtest, so they are not marked as test builds).
        if kind == "test" and not msg.get("profile", {}).get("test"):
            continue
        if kind == "bench" and "bench" not in target["kind"]:
            continue
        name = f"{kind}-{pkg}-{target['name']}"
        if name in seen or exe in seen:
            continue
        seen.update((name, exe))
        shutil.copy2(exe, os.path.join(dest, name))
        print(name)
PY
    rm -f "$list" "$list.tests" "$list.benches"
    strip --strip-debug "$out"/bin/*
    git rev-parse --short HEAD | tr -d '\n' >"$out/commit"
    if ! git diff --quiet HEAD -- . 2>/dev/null; then printf -- "-dirty" >>"$out/commit"; fi
    # Packed (xz), so the bundle stays far below the 64 MiB a run call carries.
    tar -C "$out" -cJf "$out/bin.tar.xz" bin
    rm -rf "$out/bin"
    cp scripts/gpu-run.sh "$out/gpu-run.sh"
    cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled test and bench binaries on a GPU machine: see scripts/gpu-run.sh.
exec bash "$(dirname "$0")/gpu-run.sh" run "$@"
RUN
    du -sh "$out"
}

find_lib_dirs() {
    local dirs="${DSMOE_CUDA_LIB_DIRS:-}"
    if command -v python3 >/dev/null; then
        local site
        for site in $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
            for d in "$site"/nvidia/cu13/lib "$site"/nvidia/cuda_nvrtc/lib "$site"/nvidia/cublas/lib; do
                [ -d "$d" ] && dirs="$dirs:$d"
            done
        done
    fi
    for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -d "$d" ] && dirs="$dirs:$d"
    done
    echo "${dirs#:}"
}

run() {
    local what=${1:-all} filter=${2:-}
    local here=$SELF_DIR repo out
    repo=$(cd "$here/.." && pwd)
    out=${OUT:-$repo/gpu-out}
    mkdir -p "$out/logs" "$out/perf"
    [ -e /work/main ] || { mkdir -p /work && ln -s "$repo" /work/main; }
    mkdir -p /work/main/target/tmp
    export LD_LIBRARY_PATH="$(find_lib_dirs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export DSMOE_KERNEL_CACHE=${DSMOE_KERNEL_CACHE:-/tmp/dsmoe-kernels}
    export DSMOE_RESULTS="$out/perf/results.jsonl"
    export DSMOE_COMMIT=$(cat "$here/commit")
    export CRITERION_HOME=${CRITERION_HOME:-/tmp/dsmoe-criterion}
    local bin=/tmp/dsmoe-bin
    rm -rf "$bin" && mkdir -p "$bin" && tar -C "$bin" -xJf "$here/bin.tar.xz"
    mkdir -p /work/main/target/release
    for exe in "$bin"/bin/exe-*; do
        local dest="/work/main/target/release/$(basename "$exe" | sed 's/^exe-//')"
        [ -e "$exe" ] && [ ! -e "$dest" ] && cp "$exe" "$dest"
    done
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$out/logs/nvidia-smi.txt" || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$out/logs/env.txt"
    local summary="$out/summary.txt" status
    : >"$summary"
    for exe in "$bin"/bin/*; do
        local name
        name=$(basename "$exe")
        [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
        case "$name" in
            test-*) [[ "$what" == benches ]] && continue; (cd "$repo" && "$exe" --test-threads=1 --nocapture) >"$out/logs/$name.log" 2>&1 && status=ok || status=FAILED ;;
            bench-*) [[ "$what" == tests ]] && continue; (cd "$repo" && "$exe" --bench) >"$out/logs/$name.log" 2>&1 && status=ok || status=FAILED ;;
            *) continue ;;
        esac
        printf '%-60s %s  (%s)\n' "$name" "$status" "$(grep -c 'skipped:' "$out/logs/$name.log" || true) skipped lines" | tee -a "$summary"
    done
    local measured=0
    [ -f "$DSMOE_RESULTS" ] && measured=$(wc -l <"$DSMOE_RESULTS")
    echo "== results: $measured measurements in $DSMOE_RESULTS"
    grep -h "TFLOP/s\|GB/s" "$out"/logs/bench-*.log 2>/dev/null | grep -v "^Benchmarking\|time:" | tail -40 || true
    echo "== summary"
    cat "$summary"
    ! grep -q FAILED "$summary"
}

case "${1:-}" in
    bundle) bundle ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/gpu-run.sh bundle | scripts/gpu-run.sh run [tests|benches|all] [NAME_FILTER]" >&2; exit 2 ;;
esac
