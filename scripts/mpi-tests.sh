#!/usr/bin/env bash
# The multi-process tests: built with `--features mpi` (OpenMPI and libclang installed), run under
# `mpirun -np 2 --oversubscribe` (two ranks fit on any machine, even one core).
#
#   scripts/mpi-tests.sh
#
# - mpi_collectives: every collective of the MPI communicator against the locally computed result.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v mpirun >/dev/null || { echo "scripts/mpi-tests.sh: mpirun not found (apt-get install openmpi-bin libopenmpi-dev libclang-dev)" >&2; exit 1; }
# CI containers run as root, which OpenMPI refuses unless told.
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
MPIRUN=(mpirun -np 2 --oversubscribe)

# The path of a test binary cargo built (the last "Executable" line naming it).
test_binary() {
    cargo test --release -p "$1" --features mpi --test "$2" --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable")][-1])'
}

echo "== MPI collectives (2 ranks)"
"${MPIRUN[@]}" "$(test_binary engine mpi_collectives)"
