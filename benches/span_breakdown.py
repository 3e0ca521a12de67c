#!/usr/bin/env python3
"""Where a call's time goes: spans printed by `otlp_sink ADDR --spans`, as medians over traces.

    cargo build --release -p dalc-cli --example otlp_sink
    target/release/examples/otlp_sink 127.0.0.1:4399 --spans > spans.tsv &
    # a gateway and workers with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4399, then e.g.
    # dalc bench --concurrency 1 --total 2000 (one call at a time: no queueing in the figures)
    benches/span_breakdown.py spans.tsv

For each span name (numbered when a trace has it more than once), the median of its start and
end, in microseconds from the start of its trace's root span, and of its duration; only traces
with at least MIN_SPANS spans count (a whole call, not a stray batch write). Figures only.
"""
import collections
import statistics
import sys

MIN_SPANS = 6


def main(path):
    traces = collections.defaultdict(list)
    with open(path) as lines:
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 7 or fields[0] != "span":
                continue
            _, trace, _span, parent, name, start, end = fields
            traces[trace].append((int(start), int(end), name, parent))
    offsets = collections.defaultdict(list)
    for spans in traces.values():
        roots = [span for span in spans if not span[3]]
        if not roots or len(spans) < MIN_SPANS:
            continue
        origin = min(roots)[0]
        seen = collections.Counter()
        for start, end, name, _ in sorted(spans):
            seen[name] += 1
            offsets[f"{name} #{seen[name]}"].append(
                ((start - origin) / 1e3, (end - origin) / 1e3, (end - start) / 1e3)
            )
    rows = sorted(
        (
            statistics.median(o[0] for o in found),
            statistics.median(o[1] for o in found),
            statistics.median(o[2] for o in found),
            len(found),
            name,
        )
        for name, found in offsets.items()
    )
    print(f"{'start µs':>10} {'end µs':>10} {'took µs':>10} {'traces':>7}  span")
    for start, end, took, count, name in rows:
        print(f"{start:10.1f} {end:10.1f} {took:10.1f} {count:7d}  {name}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
