#!/usr/bin/env python3
"""Parses a Prometheus text exposition with the Prometheus project's own Python parser.

Reads the text on stdin and prints one JSON object to stdout:
  {"families": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}],
   "type_lines": {"<name>": <count of # TYPE lines>}}
Exits non-zero (with the parser's error on stderr) when the text does not parse.
Values that are not finite are printed as strings ("+Inf", "NaN").
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def value(v):
    return v if math.isfinite(v) else str(v)


def main():
    text = sys.stdin.read()
    try:
        families = [
            {
                "name": f.name,
                "type": f.type,
                "help": f.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": value(s.value)}
                    for s in f.samples
                ],
            }
            for f in text_string_to_metric_families(text)
        ]
    except ValueError as error:
        print(f"not a valid exposition: {error}", file=sys.stderr)
        return 1
    # The parser takes a repeated "# TYPE" line silently; Prometheus refuses it.
    type_lines = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[:2] == ["#", "TYPE"]:
            type_lines[parts[2]] = type_lines.get(parts[2], 0) + 1
    json.dump({"families": families, "type_lines": type_lines}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
