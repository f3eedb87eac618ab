#!/usr/bin/env bash
# Run the segment fuzzer (tools/fuzz_lot.py) against a copy of shmlot whose native modules are
# built with AddressSanitizer.
#
#   tools/asan_fuzz.sh                      # 300 examples per waiter backend
#   tools/asan_fuzz.sh 1000                 # 1000 each
#   EXTRA="--derandomize" tools/asan_fuzz.sh 100
#   LIVE=20 tools/asan_fuzz.sh              # and 20 live rounds each (default 10)
#
# Besides the examples (one scribble, then every operation), each backend gets LIVE rounds of
# fuzz_lot.py --live: random bytes written over a lot while threads of the instrumented process
# are parked in it, contend on a Lock, wait on a Condition and notify it.
#
# The checkout is copied to $ASAN_BUILD (default /tmp/shmlot-asan), both native modules (the cffi
# core and the C-API fast module) are compiled there with -fsanitize=address, and the fuzzer runs
# from that copy with the ASan runtime preloaded into the (uninstrumented) interpreter. An ASan
# report (out-of-bounds read or write, use after free...) aborts the run with its stack; the
# script exits non-zero on any failure. Leak detection is off: the interpreter itself keeps
# memory until exit. Environment: PYTHON (default .venv/bin/python), ASAN_BUILD, EXTRA (more
# fuzz_lot.py arguments), LIVE (live rounds per backend; 0 for none).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
examples=${1:-300}
live=${LIVE:-10}
python=${PYTHON:-$here/.venv/bin/python}
build=${ASAN_BUILD:-/tmp/shmlot-asan}
libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "asan_fuzz: no libasan.so for gcc (install libasan / gcc's sanitizer runtime)" >&2
    exit 2
fi

rm -rf "$build"
mkdir -p "$build/tools"
cp -r "$here/shmlot" "$here/cffi_build.py" "$here/setup.py" "$here/pyproject.toml" "$build/"
cp "$here/tools/fuzz_lot.py" "$build/tools/"
find "$build/shmlot" \( -name '*.so' -o -name '__pycache__' -o -name '_core.c' \) -prune \
    -exec rm -rf {} +

export CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1"
export LDFLAGS="-fsanitize=address"
(cd "$build" && "$python" setup.py -q build_ext --inplace >/dev/null 2>"$build/build.log") || {
    cat "$build/build.log" >&2
    exit 2
}
unset CFLAGS LDFLAGS
for so in "$build"/shmlot/_core*.so "$build"/shmlot/_fast*.so; do
    if ! nm -D "$so" | grep __asan_init >/dev/null; then   # not -q: SIGPIPE under pipefail
        echo "asan_fuzz: $so is not instrumented" >&2
        exit 2
    fi
done
echo "asan_fuzz: instrumented modules in $build/shmlot: $(cd "$build/shmlot" && ls ./*.so | tr '\n' ' ')"

# the run must use the instrumented copy, with the ASan runtime loaded
(cd "$build" && env LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 "$python" -c '
import sys; sys.path.insert(0, ".")
import shmlot._core, shmlot._fast
maps = open("/proc/self/maps").read()
assert "libasan" in maps, "ASan runtime not loaded"
for m in (shmlot._core, shmlot._fast):
    assert m.__file__.startswith(sys.argv[1]), m.__file__
print("asan_fuzz: ASan runtime loaded, modules from", sys.argv[1])
' "$build")

status=0
for waiter in futex semaphore; do
    echo "asan_fuzz: $examples examples, $waiter waiter"
    # the copy, not the checkout: fuzz_lot.py puts its own parent directory first on sys.path
    if ! (cd "$build" && env LD_PRELOAD="$libasan" \
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1" \
            "$python" tools/fuzz_lot.py --examples "$examples" --waiter "$waiter" \
            --prefix "shmlot-asan-$$-" ${EXTRA:-} 2>"$build/fuzz-$waiter.err"); then
        status=1
        echo "asan_fuzz: FAILED ($waiter); last example and report:" >&2
        grep '^EXAMPLE' "$build/fuzz-$waiter.err" | tail -1 >&2 || true
        grep -v '^EXAMPLE' "$build/fuzz-$waiter.err" | tail -60 >&2
    fi
    if [ "$live" -gt 0 ]; then
        echo "asan_fuzz: $live live rounds, $waiter waiter"
        if ! (cd "$build" && env LD_PRELOAD="$libasan" \
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1" \
                "$python" tools/fuzz_lot.py --live "$live" --waiter "$waiter" \
                --prefix "shmlot-asan-$$-" 2>"$build/live-$waiter.err"); then
            status=1
            echo "asan_fuzz: FAILED (live, $waiter); last round and report:" >&2
            grep '^EXAMPLE' "$build/live-$waiter.err" | tail -1 >&2 || true
            grep -v '^EXAMPLE' "$build/live-$waiter.err" | tail -60 >&2
        fi
    fi
    # a crashed run leaves its lots behind
    for f in /dev/shm/shmlot-asan-$$-*; do
        [ -e "$f" ] && rm -f "$f"
    done
done
exit $status
