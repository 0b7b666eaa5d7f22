"""Turns a perf/run results document into its markdown table and its SVG percentile plot.

Owns: the results document's reading (median run, percentiles, the percentile curve of a
histogram), number formatting, the markdown and the SVG. Pure functions of the document:
no processes, no clock, no files (the callers write what these return).

The results document (the .json perf/run writes):
  {"commit", "dirty", "date_utc", "command", "machine": {...}, "settings": {...},
   "profiles": [{"name", "value_bytes", "connections", "pipeline", "read_fraction",
                 "runs": [<ringraft bench --json> or {"error": text}], "median_run": i}]}
A bench JSON holds "ops", "errors", "elapsed_s", "ops_per_s", "latency_us" {"p50", "p90",
"p99", "p99.9", "p99.99", "max"} and "histogram_us" [[value_us, count], ...].
"""

import math
from xml.sax.saxutils import escape

PERCENTILE_KEYS = ("p50", "p90", "p99", "p99.9", "max")


def median_run_index(runs):
    """Index of the successful run with the median ops/s (the lower median for an even
    count), or None if every run failed."""
    ok = [(run["ops_per_s"], index) for index, run in enumerate(runs) if "error" not in run]
    if not ok:
        return None
    ok.sort()
    return ok[(len(ok) - 1) // 2][1]


def format_ms(latency_us):
    if latency_us is None:
        return "-"
    ms = latency_us / 1000.0
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def format_rate(per_second):
    if per_second < 100:
        return f"{per_second:,.1f}"
    return f"{per_second:,.0f}"


def format_bytes(count):
    return f"{count / 2**30:.1f} GiB"


def machine_line(machine):
    load_start = machine.get("load_average_start")
    load_end = machine.get("load_average_end")
    load = ""
    if load_start is not None and load_end is not None:
        load = f"; 1-min load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    return (
        f"{machine.get('nproc', '?')} CPUs ({machine.get('cpu_model', 'unknown CPU')}), "
        f"{format_bytes(machine.get('memory_bytes', 0))} RAM, "
        f"Linux {machine.get('kernel', '?')}{load}"
    )


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def _run_cells(run):
    if "error" in run:
        return ["failed: " + run["error"].replace("|", "/").replace("\n", " ")] + [""] * 7
    latency = run["latency_us"]
    return [format_rate(run["ops_per_s"]), str(run["errors"])] + [
        format_ms(latency.get(key)) for key in ("p50", "p90", "p99", "p99.9", "max")
    ] + [f"{run['elapsed_s']:.1f}"]


def markdown(document, svg_name):
    """The results as markdown: context, one row per profile (its median run), the plot,
    then every run when there were several."""
    settings = document["settings"]
    runs = settings["runs"]
    lines = [
        f"# ringraft perf/run, {document['date_utc']}, commit {document['commit']}"
        + (" (with uncommitted changes)" if document.get("dirty") else ""),
        "",
        f"Machine: {machine_line(document['machine'])}.",
        "",
        f"Cluster: 3 `ringraft server` processes on this machine, `--cores {settings['cores']}`, "
        f"default groups and timing, fresh data directory. Load: `ringraft bench`, closed loop, "
        f"each run started on a settled cluster (all committed entries applied everywhere), "
        + ("requests sent through any node (`--route-any`), "
           if settings.get("routing") == "any" else "")
        + f"{settings['keys']:,} keys, {settings['duration_s']:g} s per profile, {runs} run(s) "
        f"per profile" + (" (the row is the median run by ops/s)" if runs > 1 else "")
        + (f"; the reading profiles read 128-byte values written by a preload of "
           f"{settings['preload_ops']:,} writes" if settings["preload_ops"] else "")
        + ". Profile names: w<bytes> writes, rw50 half reads, r reads; c connections; "
        f"p requests in flight per connection.",
        "",
        f"Command: `{document['command']}`",
        "",
        _row(["profile", "ops/s", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
              "max ms", "s"]),
        _row(["---"] + ["---:"] * 8),
    ]
    for entry in document["profiles"]:
        index = entry.get("median_run")
        if index is None:
            failed = entry["runs"][0] if entry["runs"] else {"error": "not run"}
            lines.append(_row([entry["name"]] + _run_cells(failed)))
        else:
            lines.append(_row([entry["name"]] + _run_cells(entry["runs"][index])))
    lines += ["", f"![latency percentiles of each profile]({svg_name})", ""]
    if runs > 1:
        lines += [
            "## Every run",
            "",
            _row(["profile", "run", "ops/s", "errors", "p50 ms", "p90 ms", "p99 ms",
                  "p99.9 ms", "max ms", "s"]),
            _row(["---", "---:"] + ["---:"] * 8),
        ]
        for entry in document["profiles"]:
            for number, run in enumerate(entry["runs"], start=1):
                mark = " (median)" if number - 1 == entry.get("median_run") else ""
                lines.append(_row([entry["name"], f"{number}{mark}"] + _run_cells(run)))
        lines.append("")
    return "\n".join(lines)


def percentile_curve(histogram):
    """The latency at each percentile as a step curve: for every recorded value, the pair
    of points (fraction of requests below it, value) and (fraction at or below it, value)."""
    total = sum(count for _, count in histogram)
    if total <= 0:
        return []
    points = []
    below = 0
    for value, count in histogram:
        if count <= 0:
            continue
        points.append((below / total, value))
        below += count
        points.append((below / total, value))
    return points


def _nines(fraction, nines_max):
    """Distance of a percentile from 100% in decades: 0 at 0%, 1 at 90%, 2 at 99%, ...
    clamped to nines_max (100% itself sits at the right edge)."""
    if fraction >= 1.0:
        return nines_max
    return min(nines_max, -math.log10(1.0 - fraction))


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#17becf", "#bcbd22")
DASHES = ("", "7 3", "2 2", "10 3 2 3", "4 4")


def percentile_label(nines):
    if nines == 0:
        return "0%"
    digits = max(0, nines - 2)
    return f"{100.0 - 100.0 / 10**nines:.{digits}f}%"


def svg(document):
    """A log-log percentile plot in the style of HdrHistogram's: the x axis runs 0%, 90%,
    99%, 99.9%, ... (decades of nines), the y axis is latency in ms on a log scale, one line
    per profile (its median run)."""
    series = []
    for entry in document["profiles"]:
        index = entry.get("median_run")
        if index is None:
            continue
        curve = percentile_curve(entry["runs"][index].get("histogram_us", []))
        if curve:
            series.append((entry["name"], curve))
    width, left, right, top, bottom = 1000, 80, 190, 50, 60
    height = max(520, top + bottom + 18 * len(series) + 20)
    plot_w, plot_h = width - left - right, height - top - bottom
    # Enough decades of nines for the largest run's resolution (1/count), 2 to 6.
    requests_max = max([_requests(entry) for entry in document["profiles"]] + [1])
    nines_max = min(6, max(2, math.ceil(math.log10(max(requests_max, 1)))))
    values = [value for _, curve in series for _, value in curve]
    low_us, high_us = (min(values), max(values)) if values else (1000, 1000)
    low_decade = math.floor(math.log10(max(low_us, 1) / 1000.0))
    high_decade = math.ceil(math.log10(max(high_us, 1) / 1000.0))
    if high_decade <= low_decade:
        high_decade = low_decade + 1

    def x_of(fraction):
        return left + plot_w * _nines(fraction, nines_max) / nines_max

    def y_of(value_us):
        decade = math.log10(max(value_us, 1) / 1000.0)
        return top + plot_h * (high_decade - decade) / (high_decade - low_decade)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="24" font-size="15">'
        f'{escape("ringraft latency by percentile, commit " + document["commit"] + ", " + document["date_utc"])}'
        "</text>",
    ]
    for nines in range(nines_max + 1):
        x = left + plot_w * nines / nines_max
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
                   f"{percentile_label(nines)}</text>")
    for decade in range(low_decade, high_decade + 1):
        y = top + plot_h * (high_decade - decade) / (high_decade - low_decade)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        label = f"{10.0**decade:g}"
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
               'stroke="#444"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 16}" text-anchor="middle">'
               "percentile</text>")
    out.append(f'<text x="18" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + plot_h / 2:.1f})">latency (ms, log scale)</text>')
    colors, dashes = {}, {}
    for number, (name, curve) in enumerate(series):
        # Same colour: same connections and pipeline; same dash: same mix.
        mix, _, load = name.partition("-")
        color = PALETTE[colors.setdefault(load, len(colors)) % len(PALETTE)]
        dash = DASHES[dashes.setdefault(mix, len(dashes)) % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        points = _thin([(x_of(fraction), y_of(value)) for fraction, value in curve])
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline class="profile" data-profile="{escape(name)}" fill="none" '
                   f'stroke="{color}" stroke-width="1.5"{dash_attr} points="{coords}"/>')
        legend_y = top + 10 + 18 * number
        legend_x = left + plot_w + 14
        out.append(f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 26}" y2="{legend_y}" '
                   f'stroke="{color}" stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{legend_x + 32}" y="{legend_y + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _requests(entry):
    index = entry.get("median_run")
    if index is None:
        return 0
    return sum(count for _, count in entry["runs"][index].get("histogram_us", []))


def _thin(points):
    """Keeps the first and last points and every point at least half a pixel from the last
    kept one, so a histogram of thousands of values stays a small path; a step's corner
    within half a pixel is not visible anyway."""
    kept = []
    for index, (x, y) in enumerate(points):
        last = index == len(points) - 1
        if kept and not last and abs(x - kept[-1][0]) < 0.5 and abs(y - kept[-1][1]) < 0.5:
            continue
        kept.append((round(x, 1), round(y, 1)))
    return kept
