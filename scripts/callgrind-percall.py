#!/usr/bin/env python3
"""Inclusive instructions per call, from a callgrind profile.

callgrind_annotate shows totals; what a stage costs per request is the total
divided by its calls. This sums every call site of each function (the
`calls=N` lines and the inclusive cost on the line after them) and prints,
largest total first: instructions per call, calls, total, function.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        target/release/bench-overhead --no-grpc --no-http --micro 250
    scripts/callgrind-percall.py /tmp/cg.out 'complexity::scan|normalize$'

The second argument (a Python regular expression on the function's name)
keeps only the functions it matches; `--callers` lists, instead, who calls
the matching functions and what those calls cost.
"""

import collections
import re
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--callers"]
    callers = "--callers" in sys.argv
    if not args:
        sys.exit(__doc__)
    pattern = re.compile(args[1]) if len(args) > 1 else None
    names = {}

    def name(token):
        # `(id) name` the first time a function appears, `(id)` after.
        m = re.match(r"\((\d+)\)(?: (.*))?", token)
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return m.group(1)

    cost, calls = collections.Counter(), collections.Counter()
    fn = cfn = None
    with open(args[0]) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("fn="):
            fn = name(line[3:])
        elif line.startswith("cfn="):
            cfn = name(line[4:])
        elif line.startswith("calls="):
            n = int(line[6:].split()[0])
            fields = lines[i + 1].split()
            inclusive = int(fields[1]) if len(fields) > 1 else 0
            if callers:
                if pattern is None or pattern.search(names.get(cfn, "")):
                    cost[fn] += inclusive
                    calls[fn] += n
            else:
                cost[cfn] += inclusive
                calls[cfn] += n
            i += 1
        i += 1
    rows = [
        (cost[k], calls[k], names.get(k, k))
        for k in calls
        if callers or pattern is None or pattern.search(names.get(k, k))
    ]
    rows.sort(reverse=True)
    for total, n, function in rows[:60]:
        print(f"{total / n:12.0f} {n:9d} {total:14d}  {function[:160]}")


if __name__ == "__main__":
    main()
