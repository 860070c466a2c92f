#!/usr/bin/env bash
# Print the host's apt sources for its own suite, one per line, as
# "URI<TAB>components<TAB>keyring or empty", from deb822 (*.sources) and
# one-line (*.list) files. Scripts that need a private apt config (another
# suite, or deb-src) start from these, so no registry host is hard-coded and
# the system's apt config, lists and caches stay untouched.
set -euo pipefail
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
{
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v s="$suite" 'BEGIN{RS=""; FS="\n"} {
            t=u=c=k=""; ok=0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^[ \t]*#/ || $i !~ /:/) continue
                key = tolower($i); sub(/:.*/, "", key)
                val = $i; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") t = " " val " "
                else if (key == "uris") { split(val, w, /[ \t]+/); u = w[1] }
                else if (key == "suites") { if ((" " val " ") ~ (" " s " ")) ok = 1 }
                else if (key == "components") c = val
                else if (key == "signed-by" && val ~ /^\//) k = val
            }
            if (ok && u != "" && c != "" && t ~ / deb /) printf "%s\t%s\t%s\n", u, c, k
        }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v s="$suite" '$1 == "deb" {
            k = ""
            if ($2 ~ /^\[/) {                                  # [opt=val ...]
                o = $0; sub(/^[^[]*\[/, "", o); sub(/\].*$/, "", o)
                n = split(o, w, /[ \t]+/)
                for (i = 1; i <= n; i++) if (w[i] ~ /^signed-by=\//) { k = w[i]; sub(/^signed-by=/, "", k) }
                line = $0; sub(/\[[^]]*\][ \t]*/, "", line)
                $0 = line
            }
            if ($3 == s) { c = $4; for (i = 5; i <= NF; i++) c = c " " $i; printf "%s\t%s\t%s\n", $2, c, k }
        }' || true   # cat: missing files
} | sort -u
