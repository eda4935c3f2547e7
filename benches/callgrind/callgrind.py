#!/usr/bin/env python3
"""Reads callgrind output for the issue #11 measurements (benches/LOAD.md, benches/README.md).

  callgrind.py calls OUT FUNCTION          how often FUNCTION (exact name, or its last path segments) was called
  callgrind.py rows OUT N [--inclusive] [--rows R]
                                           the busiest functions, instructions divided by N (per request, per pass)
  callgrind.py callers OUT N FUNCTION [--rows R]
                                           who called FUNCTION, with the instructions spent in it per caller, per N
  callgrind.py marginal SHORT LONG FUNCTION N
                                           of two runs collecting FUNCTION only (--toggle-collect), the instructions
                                           the longer one spent per N calls beyond the shorter: first calls left out
"""
import argparse
import re
import subprocess


def calls(out, function):
    """Calls of `function` summed over every caller, and the file's total instructions."""
    wanted, total, count, current = set(), None, 0, None
    with open(out, errors="replace") as lines:
        for line in lines:
            if line.startswith(("fn=", "cfn=")):
                match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if match:
                    ident, name = match.groups()
                    if name is not None and (name == function or name.endswith("::" + function)):
                        wanted.add(ident)
                    if line.startswith("cfn="):
                        current = ident
            elif line.startswith("calls="):
                if current in wanted:
                    count += int(line.split("=")[1].split()[0])
                current = None
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    return count, total


def annotate(out, *flags):
    return subprocess.run(
        ["callgrind_annotate", "--threshold=100", *flags, out], capture_output=True, text=True, check=True
    ).stdout


def rows(out, per, inclusive, limit):
    printed = 0
    for line in annotate(out, f"--inclusive={'yes' if inclusive else 'no'}").splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)", line)
        if not match or "PROGRAM TOTALS" in line or (not inclusive and match.group(2) == "100.0"):
            continue
        value, share, name = match.groups()
        name = re.sub(r"^\?\?\?:", "", name)
        print(f"{int(value.replace(',', '')) / per:12.0f} {share:>6}%  {name[:150]}")
        printed += 1
        if printed >= limit:
            break


def callers(out, per, function, limit):
    found = []
    for block in annotate(out, "--tree=caller").split("\n\n"):
        lines = block.strip().splitlines()
        own = [line for line in lines if re.match(r"\s*[\d,]+ \(.*\)\s+\*", line)]
        if not own or function not in own[0]:
            continue
        for line in lines:
            match = re.match(r"\s*([\d,]+) \(.*?\)\s+<\s+(?:\?\?\?:)?(.*?) \(([\d,]+)x\)", line)
            if match:
                found.append((int(match.group(1).replace(",", "")), match.group(2), match.group(3)))
    for value, name, count in sorted(found, reverse=True)[:limit]:
        print(f"{value / per:12.0f} {count:>12}x  {name[:140]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("calls")
    p.add_argument("out")
    p.add_argument("function")
    p = sub.add_parser("rows")
    p.add_argument("out")
    p.add_argument("per", type=float)
    p.add_argument("--inclusive", action="store_true")
    p.add_argument("--rows", type=int, default=40)
    p = sub.add_parser("marginal")
    p.add_argument("short")
    p.add_argument("long")
    p.add_argument("function")
    p.add_argument("per", type=int)
    p = sub.add_parser("callers")
    p.add_argument("out")
    p.add_argument("per", type=float)
    p.add_argument("function")
    p.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    if args.command == "calls":
        count, total = calls(args.out, args.function)
        per = total / count if count else 0
        print(f"calls={count} total={total} per_call={per:.0f}")
    elif args.command == "marginal":
        (short_calls, short_total), (long_calls, long_total) = (
            calls(args.short, args.function),
            calls(args.long, args.function),
        )
        extra = long_calls - short_calls
        print(f"{(long_total - short_total) / extra * args.per:,.0f} instructions per {args.per} calls ({extra} calls)")
    elif args.command == "rows":
        rows(args.out, args.per, args.inclusive, args.rows)
    else:
        callers(args.out, args.per, args.function, args.rows)


if __name__ == "__main__":
    main()
