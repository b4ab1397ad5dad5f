# md2man.awk: the restricted markdown of docs/ into a man page (roff, man macros).
#
#   awk -v title=ORCHESTRATOR -v section=1 -v version=0.1.0 \
#       -v name='orchestrator - a process supervisor' \
#       -v synopsis='orchestrator COMMAND [OPTIONS]' -v docdir=/usr/share/doc/orchestrator \
#       -f contrib/md2man.awk docs/cli.md > orchestrator.1
#
# POSIX awk only, so that a cross-compiling build host needs nothing else. What it
# understands is what docs/ uses, and nothing more:
#   # Title            dropped: .TH, NAME and SYNOPSIS stand for it
#   ## Section         .SH, upper case; the text before the first one is DESCRIPTION
#   ### Sub            .SS
#   paragraphs         lines joined, filled by troff
#   - item             a bullet; indented lines continue it
#   ``` ... ```        a literal block, indented
#   | a | b |          a table: each row an indented paragraph, first cell in bold
#   `code`, **bold**   bold
#   [text](page.md)    the text; a page of docs/ becomes its man page or its file
# `synopsis` may hold several lines: awk turns a "\n" given with -v into a newline.

BEGIN {
    mode = "text"      # text, item, code, table
    fresh = 1          # right after a heading: a paragraph needs no .PP
    para = 0           # lines of the current paragraph or item
    buf = ""           # their text, printed when the block ends
    split("", head)
    printf ".TH %s %s \"\" \"orchestrator %s\" \"%s\"\n", title, section, version, \
        (section == 5 ? "File Formats" : "User Commands")
    print ".\\\" Generated from docs/ by contrib/md2man.awk; edit the markdown instead."
    print ".nh"
    print ".ad l"
    print ".SH NAME"
    sub(/ - /, " \\- ", name)
    print name
    print ".SH SYNOPSIS"
    n = split(synopsis, syn, "\n")
    print ".nf"
    for (i = 1; i <= n; i++) print inline(syn[i])
    print ".fi"
    print ".SH DESCRIPTION"
}

# Escapes troff's specials in plain text: backslash, and a dot or quote at a line start.
function esc(s) {
    gsub(/\\/, "\\e", s)
    gsub(/-/, "\\-", s)
    return s
}

function lead(s) {
    if (s ~ /^[.']/) s = "\\&" s
    return s
}

# A long path may break after any slash (a narrow terminal, a deep PREFIX).
function path(s) {
    s = esc(s)
    gsub(/\//, "/\\:", s)
    return s
}

# A link's text, or for a page of docs/ the man page (or file) it stands for.
function link(text, target) {
    if (target == "cli.md") return "\\fBorchestrator\\fR(1)"
    if (target == "configuration.md") return "\\fBorchestrator.json\\fR(5)"
    if (target ~ /^[A-Za-z0-9_-]+\.md$/) {
        if (text == target) return path(docdir "/" target)
        return esc(text) " (" path(docdir "/" target) ")"
    }
    return esc(text)
}

# `code` and **bold** in bold; links as above; everything else escaped.
function inline(s,    out, c, i, j, k, t, u) {
    out = ""
    while (length(s) > 0) {
        c = substr(s, 1, 1)
        if (c == "`") {
            i = index(substr(s, 2), "`")
            if (i == 0) { out = out esc(s); break }
            out = out "\\fB" esc(substr(s, 2, i - 1)) "\\fR"
            s = substr(s, i + 2)
        } else if (substr(s, 1, 2) == "**") {
            i = index(substr(s, 3), "**")
            if (i == 0) { out = out esc(s); break }
            out = out "\\fB" esc(substr(s, 3, i - 1)) "\\fR"
            s = substr(s, i + 4)
        } else if (c == "[" && (j = index(s, "](")) > 0 && (k = index(substr(s, j + 2), ")")) > 0) {
            t = substr(s, 2, j - 2)
            u = substr(s, j + 2, k - 1)
            out = out link(t, u)
            s = substr(s, j + 2 + k)
        } else {
            i = match(s, /[`[*]/)
            if (i == 0) { out = out esc(s); break }
            if (i == 1) { out = out esc(c); s = substr(s, 2); continue }
            out = out esc(substr(s, 1, i - 1))
            s = substr(s, i)
        }
    }
    return out
}

# Ends a block: a paragraph or an item is printed whole, so that a `code span` or a
# **bold** run may cross a line break of the markdown; table rows are printed as they
# come.
function endblock() {
    if (buf != "") print lead(inline(buf))
    buf = ""
    if (mode == "table") split("", head)
    mode = "text"
    para = 0
}

function add(text) {
    buf = (buf == "" ? text : buf " " text)
}

function cells(line, arr,    n, i) {
    sub(/^[ \t]*\|/, "", line)
    sub(/\|[ \t]*$/, "", line)
    n = split(line, arr, /\|/)
    for (i = 1; i <= n; i++) {
        sub(/^[ \t]+/, "", arr[i])
        sub(/[ \t]+$/, "", arr[i])
    }
    return n
}

mode == "code" {
    if ($0 ~ /^```/) {
        print ".fi"
        print ".RE"
        mode = "text"
        para = 0
        next
    }
    line = $0
    gsub(/\\/, "\\e", line)
    print lead(line)
    next
}

/^```/ {
    endblock()
    if (!fresh) print ".PP"
    print ".RS 4"
    print ".nf"
    mode = "code"
    fresh = 0
    next
}

/^# / { next }

/^## / {
    endblock()
    t = substr($0, 4)
    print ".SH " inline(toupper(t))
    fresh = 1
    next
}

/^### / {
    endblock()
    print ".SS " inline(substr($0, 5))
    fresh = 1
    next
}

/^[ \t]*$/ {
    endblock()
    next
}

/^\|/ {
    if (mode != "table") {
        endblock()
        mode = "table"
        fresh = 0
        nhead = cells($0, head)
        next
    }
    if ($0 ~ /^\|[ \t:|-]+\|?[ \t]*$/) next
    n = cells($0, row)
    print ".TP 4"
    print lead("\\fB" inline(row[1]) "\\fR")
    out = ""
    for (i = 2; i <= n; i++) {
        if (row[i] == "" || row[i] == "-") continue
        out = out (out == "" ? "" : "; ") inline(head[i]) ": " inline(row[i])
    }
    if (out != "") print lead(out)
    next
}

/^- / {
    endblock()
    mode = "item"
    fresh = 0
    print ".IP \\(bu 2"
    add(substr($0, 3))
    next
}

/^[ \t]+[^ \t]/ && mode == "item" {
    line = $0
    sub(/^[ \t]+/, "", line)
    add(line)
    next
}

{
    if (mode == "item" || mode == "table") endblock()
    if (para == 0 && !fresh) print ".PP"
    fresh = 0
    para++
    add($0)
}

END { endblock() }
