"""redis-benchmark's side of perf/redis-compare: the settings, the command line, reading its
--csv output, and the side-by-side table of ringraft against redis with their ratios.

Owns: setting names (`c50-p16-d128`), CSV parsing and the markdown table. Pure functions:
no processes (perf/redis-compare runs them), no files.
"""

import csv
import io

DEFAULT_SETTINGS = "c50-p16-d128,c50-p1-d128,c1-p1-d128"
DEFAULT_TESTS = "set,get,incr"
TARGETS = ("ringraft", "redis")

# What each redis-benchmark test sends, so a server's support can be probed first.
PROBES = {
    "set": ["SET", "perf:probe", "value"],
    "get": ["GET", "perf:probe"],
    "incr": ["INCR", "perf:probe:counter"],
}


def parse_setting(name):
    """`c50-p16-d128` -> (clients 50, pipeline 16, data bytes 128); ValueError otherwise."""
    parts = name.split("-")
    letters = [part[:1] for part in parts]
    if letters != ["c", "p", "d"]:
        raise ValueError(f"setting {name!r} is not c<clients>-p<pipeline>-d<bytes>")
    try:
        clients, pipeline, data = (int(part[1:]) for part in parts)
    except ValueError as error:
        raise ValueError(f"setting {name!r}: {error}") from error
    if clients < 1 or pipeline < 1 or data < 1:
        raise ValueError(f"setting {name!r}: every number must be at least 1")
    return clients, pipeline, data


def parse_tests(text):
    tests = [test.strip().lower() for test in text.split(",") if test.strip()]
    unknown = [test for test in tests if test not in PROBES]
    if unknown or not tests:
        raise ValueError(f"--tests must name some of {', '.join(PROBES)}; got {text!r}")
    return tests


def benchmark_command(port, test, setting, requests, keys):
    clients, pipeline, data = parse_setting(setting)
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test,
            "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "-d", str(data),
            "-r", str(keys), "--csv"]


def parse_csv(text):
    """redis-benchmark 7's --csv output -> {test name in lower case: {"rps", "avg_ms",
    "p50_ms", "p95_ms", "p99_ms", "max_ms"}}; rows it cannot read are left out."""
    rows = {}
    lines = [line for line in text.splitlines() if line.startswith('"')]
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            rows[row["test"].lower()] = {
                "rps": float(row["rps"]),
                "avg_ms": float(row["avg_latency_ms"]),
                "p50_ms": float(row["p50_latency_ms"]),
                "p95_ms": float(row["p95_latency_ms"]),
                "p99_ms": float(row["p99_latency_ms"]),
                "max_ms": float(row["max_latency_ms"]),
            }
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return "-"
    return f"{numerator / denominator:.2f}"


def _ms(value):
    return "-" if value is None else f"{value:.3f}"


def _rps(value):
    return "-" if value is None else f"{value:,.0f}"


def table(results):
    """The side-by-side table. `results` is a list of {"setting", "test", "ringraft":
    outcome, "redis": outcome}, an outcome being a parse_csv row or {"error": text}."""
    header = ["setting", "test", "ringraft rps", "redis rps", "rps ratio",
              "ringraft p50 ms", "redis p50 ms", "p50 ratio",
              "ringraft p99 ms", "redis p99 ms", "p99 ratio"]
    lines = ["| " + " | ".join(header) + " |",
             "| --- | --- | " + " | ".join(["---:"] * (len(header) - 2)) + " |"]
    notes = []
    for result in results:
        ours, theirs = result["ringraft"], result["redis"]
        for target, outcome in (("ringraft", ours), ("redis", theirs)):
            if "error" in outcome:
                notes.append(f"- {result['setting']} {result['test']} on {target}: "
                             f"{outcome['error']}")
        value = lambda outcome, key: outcome.get(key)  # noqa: E731
        cells = [
            result["setting"], result["test"].upper(),
            _rps(value(ours, "rps")), _rps(value(theirs, "rps")),
            _ratio(value(ours, "rps"), value(theirs, "rps")),
            _ms(value(ours, "p50_ms")), _ms(value(theirs, "p50_ms")),
            _ratio(value(ours, "p50_ms"), value(theirs, "p50_ms")),
            _ms(value(ours, "p99_ms")), _ms(value(theirs, "p99_ms")),
            _ratio(value(ours, "p99_ms"), value(theirs, "p99_ms")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\nNot measured:\n\n" + "\n".join(notes) + "\n"
    return text
