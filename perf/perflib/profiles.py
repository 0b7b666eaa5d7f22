"""The standard benchmark profiles of perf/run and how each becomes `ringraft bench` flags.

Owns: profile names (`w16-c1-p1`, `rw50-c64-p1`, `r-c16-p16`, ...), the standard set and
the `--only` selection. Must not: start processes or read results.

A name reads mix, then connections, then pipeline depth:
  w<bytes>   writes only, values of <bytes> bytes
  rw50       half reads, half writes of 128-byte values
  r          reads only (of 128-byte values written by the preload)
Outside the standard set, `--only` also takes rw<percent of reads>[w<bytes>], e.g.
`rw90-c16-p1` or `rw50w16-c64-p16`.
"""

import fnmatch
from dataclasses import dataclass

# Values written by the rw50 profiles and by the preload that the read profiles read.
MIXED_VALUE_BYTES = 128
WRITE_VALUE_BYTES = (16, 128)
CONNECTIONS = (1, 16, 64)
PIPELINES = (1, 16)

# The goal profiles (1 conn p1 128 B writes; 50 conn p16 and p1 128 B writes;
# 50 conn p16 reads). The first is already in the cross product.
GOAL_PROFILE_NAMES = ("w128-c1-p1", "w128-c50-p16", "w128-c50-p1", "r-c50-p16")


@dataclass(frozen=True)
class Profile:
    name: str
    value_bytes: int
    connections: int
    pipeline: int
    read_fraction: float

    def bench_args(self):
        """The `ringraft bench` flags of this profile (endpoints, duration and output aside)."""
        return [
            "--connections", str(self.connections),
            "--pipeline", str(self.pipeline),
            "--value-size", str(self.value_bytes),
            "--read-fraction", format_fraction(self.read_fraction),
        ]

    def reads(self):
        return self.read_fraction > 0.0


def format_fraction(fraction):
    text = f"{fraction:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def profile(name):
    """Parses a profile name into its settings; raises ValueError on a malformed name."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].startswith("c") or not parts[2].startswith("p"):
        raise ValueError(f"profile name {name!r} is not <mix>-c<connections>-p<pipeline>")
    mix = parts[0]
    try:
        connections = int(parts[1][1:])
        pipeline = int(parts[2][1:])
        if mix == "r":
            value_bytes, read_fraction = MIXED_VALUE_BYTES, 1.0
        elif mix.startswith("rw"):
            percent, _, size = mix[2:].partition("w")
            value_bytes = int(size) if size else MIXED_VALUE_BYTES
            read_fraction = int(percent) / 100.0
            if not 0 < read_fraction < 1:
                raise ValueError(f"read percentage {percent} is not between 1 and 99")
        elif mix.startswith("w"):
            value_bytes, read_fraction = int(mix[1:]), 0.0
        else:
            raise ValueError(f"unknown mix {mix!r}")
    except ValueError as error:
        raise ValueError(f"profile name {name!r}: {error}") from error
    if connections < 1 or pipeline < 1:
        raise ValueError(f"profile name {name!r}: connections and pipeline must be >= 1")
    return Profile(name, value_bytes, connections, pipeline, read_fraction)


def standard_profiles():
    """The standard set, in run order: writes, then the mixed profiles, then reads."""
    names = []
    for size in WRITE_VALUE_BYTES:
        for connections in CONNECTIONS:
            for pipeline in PIPELINES:
                names.append(f"w{size}-c{connections}-p{pipeline}")
    names += ["w128-c50-p1", "w128-c50-p16"]
    for mix in ("rw50", "r"):
        for connections in CONNECTIONS:
            for pipeline in PIPELINES:
                names.append(f"{mix}-c{connections}-p{pipeline}")
    names.append("r-c50-p16")
    return [profile(name) for name in names]


def select(patterns):
    """The profiles matching any of the comma-separated names or shell patterns, in the
    standard order; a name outside the standard set is parsed and run as given."""
    standard = standard_profiles()
    chosen = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            matched = [p for p in standard if fnmatch.fnmatchcase(p.name, pattern)]
            if not matched:
                raise ValueError(f"--only pattern {pattern!r} matches no standard profile")
            chosen += matched
        else:
            chosen.append(profile(pattern))
    order = {p.name: index for index, p in enumerate(standard)}
    unique = {p.name: p for p in chosen}
    return sorted(unique.values(), key=lambda p: (order.get(p.name, len(order)), p.name))
