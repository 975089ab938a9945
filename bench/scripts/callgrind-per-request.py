#!/usr/bin/env python3
"""Per-request profile from two callgrind runs of the same binary: one that served N more
requests than the other. Prints the functions whose instruction counts grew, per request,
largest first (self cost, or inclusive with --inclusive).

With --group, sums the self cost per request by component (crate or library) instead: the
table of where a request's instructions go, for the gateway or for nginx alike.

Usage: callgrind-per-request.py BASE.out RUN.out N [--inclusive] [--top K] [--group]
"""
import re, subprocess, sys

COMPONENTS = [  # (pattern on the symbol or its object file, component), first match wins
    (r"libcrypto", "OpenSSL libcrypto"), (r"libssl", "OpenSSL libssl"), (r"^ngx_", "nginx"),
    (r"^(ring|ring_core\w*|_aesni\w*|rustls|tokio_rustls)$", "TLS: rustls, ring"),
    (r"^__(memcpy|memmove|memset|memcmp)", "memcpy, memmove, memset"),
    (r"^(_?mi_\w*|mimalloc|libmimalloc_sys)$", "allocator (mimalloc)"),
    (r"^(malloc|free|_int_\w+|realloc|calloc|cfree)", "allocator (glibc)"),
    (r"^hyper$", "hyper"), (r"^hyper_util$", "hyper-util"), (r"^h2$", "h2"),
    (r"^httparse$", "httparse"), (r"^http$", "http (header maps, URIs)"),
    (r"^tokio$", "tokio"), (r"^nexus_\w+$", "the gateway's own code"),
    (r"^(std|core|alloc)$", "std, core, alloc"), (r"libc\.so", "libc, other"),
    (r"/nginx$", "nginx"), (r"vgpreload|ld-linux", "dynamic loader, valgrind"),
]

def component(name, obj, source):
    """The component a symbol's instructions belong to: its object file's library, else the
    crate of the symbol (the first path segment, inside any `<...>`). A generic of std's
    (`<Pin<P> as Future>::poll`, say) counts where its code was written when that was
    outside std: an inlined closure of ours is ours."""
    crate = re.match(r"[<&\s]*(?:dyn |mut )*([A-Za-z_]\w*)", name)
    crate = crate.group(1) if crate else name
    if crate in ("std", "core", "alloc"):
        written = re.search(r"index\.crates\.io-[^/]*/([^/]+?)-\d[^/]*/", source)
        if written:
            crate = written.group(1).replace("-", "_")
        elif source.startswith("/work/") or source.startswith("./"):
            crate = "nexus_gateway"
    for pattern, label in COMPONENTS:
        if re.search(pattern, crate) or re.search(pattern, obj):
            return label
    return "rest: " + crate

def costs(path, inclusive, group=False):
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--tree=none", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path],
        check=True, capture_output=True, text=True).stdout
    table, total = {}, 0
    for line in out.splitlines():
        if "=>" in line or "<=" in line:
            continue
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:\*\s+)?(.+)$", line)
        if not m or ":" not in m.group(2):
            t = re.match(r"\s*([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", line) or re.match(r"\s*([\d,]+)\s+PROGRAM TOTALS", line)
            if t: total = int(t.group(1).replace(",", ""))
            continue
        source = m.group(2).strip().split(":", 1)[0]
        name = re.sub(r"^\S*?:", "", m.group(2).strip(), count=1) if not m.group(2).startswith("???:") else m.group(2)[4:]
        obj = re.search(r" \[([^\]]*)\]$", name)
        name = re.sub(r" \[[^\]]*\]$", "", name)
        if group:
            name = component(name, obj.group(1) if obj else "", source)
        table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table, total

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    inclusive = "--inclusive" in sys.argv
    group = "--group" in sys.argv
    top = 40
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1]); args.remove(str(top))
    base, run, n = args[0], args[1], int(args[2])
    (b, bt), (r, rt) = costs(base, inclusive, group), costs(run, inclusive, group)
    print(f"total per request: {(rt - bt) / n:,.0f} instructions")
    rows = sorted(((r.get(k, 0) - b.get(k, 0)) / n, k) for k in set(r) | set(b))
    for per, name in reversed(rows[-top:]):
        print(f"{per:>10,.0f}  {name[:150]}")

main()
