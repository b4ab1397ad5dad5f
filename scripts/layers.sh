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
# A `use` that runs over several lines (rustfmt splits a long group) is read as one,
# groups nest (`crate::{common::{a, b}, config::c}`), and a `super::` chain that
# climbs to the crate root (`super::super::X` in src/A/b.rs) counts as `crate::X`.
#
# A top-level module missing from this table is an error too, so that a new one gets
# a place in the order before it gets imports. With `-v`, prints the count as well.
# POSIX sh and awk; run from anywhere (`LAYERS_ROOT` names another tree, for tests).
cd "${LAYERS_ROOT:-$(dirname "$0")/..}" || exit 2
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
# The names a `crate::` path names first: `X` of `X::...`, or each top-level entry of
# a group `{X::..., Y::{...}, Z}`. `p` starts right after `crate::`.
function firsts(p, out,    c, i, k, level, entry, n) {
    n = 0
    if (substr(p, 1, 1) != "{") {
        if (match(p, /^[a-z_]+/)) out[++n] = substr(p, 1, RLENGTH)
        return n
    }
    level = 0
    entry = ""
    for (i = 1; i <= length(p); i++) {
        c = substr(p, i, 1)
        if (c == "{") { level++; if (level == 1) continue }
        if (c == "}") { level--; if (level == 0) break }
        if (level == 1 && c == ",") { out[++n] = entry; entry = ""; continue }
        entry = entry c
    }
    out[++n] = entry
    for (k = 1; k <= n; k++) {
        gsub(/[ \t]/, "", out[k])
        sub(/(::|\{).*/, "", out[k])
    }
    return n
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
    # How many `super::` reach the crate root from this file: its module depth.
    rel = file
    sub(/^src\//, "", rel)
    depth = gsub(/\//, "/", rel) + 1
    if (rel ~ /\/mod\.rs$/) depth--
    if (rel == "lib.rs" || rel == "main.rs") depth = 0
    root = ""
    for (i = 0; i < depth; i++) root = root "super::"
    n = 0
    stmt = ""
    while ((getline line < file) > 0) {
        n++
        # Comments are not imports.
        sub(/\/\/.*/, "", line)
        if (stmt != "") {
            stmt = stmt " " line
            if (index(line, ";") == 0) continue
            line = stmt
            stmt = ""
        } else {
            at = n
            if (line ~ /^[ \t]*(pub(\([^)]*\))?[ \t]+)?use[ \t]/ && index(line, ";") == 0) {
                stmt = line
                continue
            }
        }
        if (root != "") {
            while ((i = index(line, root)) > 0 && (i == 1 || substr(line, i - 1, 1) !~ /[a-z_:]/))
                line = substr(line, 1, i - 1) "crate::" substr(line, i + length(root))
        }
        while ((i = index(line, "crate::")) > 0) {
            line = substr(line, i + 7)
            k = firsts(line, names)
            for (j = 1; j <= k; j++) {
                dep = names[j]
                if (dep == "" || dep == "self") continue
                d = rank(dep)
                # Items of the crate root (lib.rs) are the top layer.
                if (d < 0) d = 6
                if (d > r) {
                    printf "%s:%d: %s -> %s\n", file, at, top, dep
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
