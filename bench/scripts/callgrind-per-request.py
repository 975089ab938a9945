#!/usr/bin/env python3
"""Per-request profile from two callgrind runs of the same binary: one that served N more
requests than the other. Prints the functions whose instruction counts grew, per request,
largest first (self cost, or inclusive with --inclusive).

Usage: callgrind-per-request.py BASE.out RUN.out N [--inclusive] [--top K]
"""
import re, subprocess, sys

def costs(path, inclusive):
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
        name = re.sub(r"^\S*?:", "", m.group(2).strip(), count=1) if not m.group(2).startswith("???:") else m.group(2)[4:]
        name = re.sub(r" \[[^\]]*\]$", "", name)
        table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table, total

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    inclusive = "--inclusive" in sys.argv
    top = 40
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1]); args.remove(str(top))
    base, run, n = args[0], args[1], int(args[2])
    (b, bt), (r, rt) = costs(base, inclusive), costs(run, inclusive)
    print(f"total per request: {(rt - bt) / n:,.0f} instructions")
    rows = sorted(((r.get(k, 0) - b.get(k, 0)) / n, k) for k in set(r) | set(b))
    for per, name in reversed(rows[-top:]):
        print(f"{per:>10,.0f}  {name[:150]}")

main()
