"""Where a profiled process spent its time, per thread: a py-spy raw (collapsed-stack) file summarised.

    py-spy record --pid <uvicorn pid> --duration 30 --rate 200 --format raw --output prof.txt --threads
    python benchmarks/profile_summary.py prof.txt [--top 25] [--thread MainThread]

Prints, per thread, its share of the samples (py-spy records busy samples only, so a thread at 100 % used
a whole core) and the functions with the largest inclusive share of that thread's samples (a function counts
once per stack, however often it recurses). Used for the service profile in docs/benchmarks.md ("Service").
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LOCATION = re.compile(r" \((?P<path>[^()]*?):\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func file.py`` (line numbers would split one function in many)."""
    m = _LOCATION.search(frame)
    if not m:
        return frame
    return f"{frame[: m.start()]} {Path(m.group('path')).name}"


def summarise(lines: list[str]) -> tuple[Counter, dict[str, Counter]]:
    per_thread: Counter = Counter()
    inclusive: dict[str, Counter] = {}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        per_thread[thread] += n
        names = {frame_name(f) for f in frames}
        inclusive.setdefault(thread, Counter()).update(dict.fromkeys(names, n))
    return per_thread, inclusive


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--top", type=int, default=25, help="functions listed per thread")
    ap.add_argument("--thread", default=None, help="only threads whose name contains this")
    ap.add_argument("--seconds", type=float, default=None, help="recorded duration, for a %% of one core")
    ap.add_argument("--rate", type=float, default=None, help="samples per second, for a %% of one core")
    args = ap.parse_args(argv)
    if not args.raw.is_file():
        ap.error(f"{args.raw}: no such file")
    per_thread, inclusive = summarise(args.raw.read_text().splitlines())
    if not per_thread:
        ap.error(f"{args.raw}: no 'stack count' lines (expected py-spy --format raw output)")
    possible = args.seconds * args.rate if args.seconds and args.rate else None
    for thread, n in per_thread.most_common():
        if args.thread and args.thread not in thread:
            continue
        core = f", {100 * n / possible:.0f} % of a core" if possible else ""
        print(f"{thread}: {n} samples{core}")
        for name, k in inclusive[thread].most_common(args.top):
            print(f"  {100 * k / n:5.1f} %  {name}")


if __name__ == "__main__":
    main()
