#!/bin/sh
# Lists every import that runs upwards through the layers of src/ (ARCHITECTURE.md)
# and exits 1 if there is one. A file's layer is its top-level module (src/X.rs or
# src/X/...); a use of `crate::Y` (or `crate::{Y, ...}`) from a layer below Y's is
# upward. Bottom to top:
#
#   0 common          the ground floor: imports nothing of the crate
#   1 config
#   2 process
#   3 output
#   4 health control  (same level: may import each other)
#   5 supervise
#   6 cli daemon lib main fuzz
#
# A top-level module missing from this table is an error too, so that a new one gets
# a place in the order before it gets imports. With `-v`, prints the count as well.
# POSIX sh and awk; run from anywhere.
cd "$(dirname "$0")/.." || exit 2
find src -name '*.rs' | sort | awk -v verbose="${1:-}" '
function rank(m) {
    if (m == "common") return 0
    if (m == "config") return 1
    if (m == "process") return 2
    if (m == "output") return 3
    if (m == "health" || m == "control") return 4
    if (m == "supervise") return 5
    if (m == "cli" || m == "daemon" || m == "lib" || m == "main" || m == "fuzz") return 6
    return -1
}
{
    file = $0
    top = file
    sub(/^src\//, "", top)
    sub(/[\/.].*/, "", top)
    r = rank(top)
    if (r < 0) {
        printf "%s: module `%s` has no layer in scripts/layers.sh\n", file, top
        bad++
        next
    }
    n = 0
    while ((getline line < file) > 0) {
        n++
        # Comments are not imports.
        sub(/\/\/.*/, "", line)
        while (match(line, /crate::(\{[^}]*\}?|[a-z_]+)/)) {
            used = substr(line, RSTART + 7, RLENGTH - 7)
            line = substr(line, RSTART + RLENGTH)
            gsub(/[{} ]/, "", used)
            k = split(used, names, ",")
            for (i = 1; i <= k; i++) {
                dep = names[i]
                sub(/::.*/, "", dep)
                if (dep == "" || dep == "self") continue
                d = rank(dep)
                # Items of the crate root (lib.rs) are the top layer.
                if (d < 0) d = 6
                if (d > r) {
                    printf "%s:%d: %s -> %s\n", file, n, top, dep
                    bad++
                }
            }
        }
    }
    close(file)
}
END {
    if (verbose != "") printf "%d upward import(s)\n", bad + 0
    exit bad > 0
}'
