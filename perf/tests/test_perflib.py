"""Self-checks of the perf scripts' pure parts: the profile matrix, the markdown table and
the SVG plot of a saved results document, redis-benchmark's CSV and the comparison table,
and the reading of `ringraft status`. Fast (well under a second), no processes started.

Owns: these checks and their fixtures (tests/fixtures/). Must not: start servers or
benchmarks, or depend on timing.
"""

import json
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from perflib import processes, profiles, redis, report

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SVG_NS = "{http://www.w3.org/2000/svg}"


def load_results():
    with open(FIXTURES / "results-small.json", encoding="utf-8") as file:
        return json.load(file)


class ProfileTests(unittest.TestCase):
    def test_standard_set_holds_the_matrix_and_the_goal_profiles(self):
        # The standard set is the documented 27 distinct, parseable names, goals included.
        names = [p.name for p in profiles.standard_profiles()]
        self.assertEqual(len(names), 27, names)
        self.assertEqual(len(set(names)), len(names), names)
        for goal in profiles.GOAL_PROFILE_NAMES:
            self.assertIn(goal, names)
        for name in names:
            self.assertEqual(profiles.profile(name).name, name)
        first_read = min(i for i, n in enumerate(names) if not n.startswith("w"))
        self.assertTrue(all(n.startswith("w") for n in names[:first_read]), names)

    def test_names_become_bench_flags(self):
        # A name's parts become the bench's connections, pipeline, value size and read mix.
        self.assertEqual(
            profiles.profile("rw50-c64-p1").bench_args(),
            ["--connections", "64", "--pipeline", "1", "--value-size", "128",
             "--read-fraction", "0.5"])
        self.assertEqual(profiles.profile("w16-c1-p16").bench_args()[5], "16")
        self.assertEqual(profiles.profile("r-c50-p16").read_fraction, 1.0)
        custom = profiles.profile("rw90w16-c2-p3")
        self.assertEqual((custom.read_fraction, custom.value_bytes), (0.9, 16))
        for bad in ("w16-c1", "x-c1-p1", "w16-c0-p1", "w16-p1-c1", "wx-c1-p1", "rw100-c1-p1",
                    "rw0-c1-p1", "rwx-c1-p1"):
            with self.assertRaises(ValueError, msg=bad):
                profiles.profile(bad)

    def test_only_selects_patterns_in_standard_order(self):
        # --only takes patterns and names, drops duplicates and keeps the run order.
        chosen = [p.name for p in profiles.select("r-c50-p16,w128-c1-*,w128-c1-p1")]
        self.assertEqual(chosen, ["w128-c1-p1", "w128-c1-p16", "r-c50-p16"])
        self.assertEqual(len(profiles.select("w128-*")), 8)
        self.assertEqual([p.name for p in profiles.select("w4096-c2-p3")], ["w4096-c2-p3"])
        with self.assertRaises(ValueError):
            profiles.select("nothing-*")


class ReportTests(unittest.TestCase):
    def test_median_run_is_the_middle_successful_run(self):
        # The median by ops/s skips failed runs, takes the lower middle of an even count.
        runs = [{"ops_per_s": 100.0}, {"ops_per_s": 300.0}, {"ops_per_s": 200.0}]
        self.assertEqual(report.median_run_index(runs), 2)
        self.assertEqual(report.median_run_index(runs[:2]), 0)
        self.assertEqual(report.median_run_index([{"error": "x"}, {"ops_per_s": 5.0}]), 1)
        self.assertIsNone(report.median_run_index([{"error": "x"}]))

    def test_markdown_table_of_the_fixture(self):
        # Each profile's row shows its median run in ms; failures and every run are listed.
        text = report.markdown(load_results(), "plot.svg")
        lines = text.splitlines()
        self.assertIn("| w128-c1-p1 | 1,402 | 0 | 0.620 | 0.900 | 1.87 | 6.62 | 6.62 | 1.0 |",
                      lines)
        self.assertIn("| r-c16-p16 | 52,552 | 3 | 4.45 | 6.22 | 10.9 | 34.2 | 41.0 | 1.0 |",
                      lines)
        failed = [line for line in lines if line.startswith("| w16-c64-p16 |")]
        self.assertTrue(failed and "failed: ringraft bench exit 1" in failed[0], failed)
        self.assertEqual(failed[0].count("|"), 10, "a failed row keeps the table's columns")
        self.assertIn("refused / retried", failed[0], "a | in an error must not split cells")
        self.assertIn("![latency percentiles of each profile](plot.svg)", lines)
        self.assertIn("## Every run", lines)
        self.assertIn("| w128-c1-p1 | 3 (median) | 1,402 | 0 | 0.620 | 0.900 | 1.87 | 6.62 "
                      "| 6.62 | 1.0 |", lines)
        self.assertIn("2 CPUs (Test CPU), 23.5 GiB RAM, Linux 6.18.0; 1-min load average "
                      "0.50 at start, 1.25 at end", text)
        header = [line for line in lines if line.startswith("| profile |")][0]
        self.assertEqual(header.count("|"), 10)

    def test_percentile_curve_steps_through_the_histogram(self):
        # The curve runs from 0% at the lowest value to 100% at the highest, never falling.
        curve = report.percentile_curve([[700, 500], [900, 400], [2000, 90], [9000, 10]])
        self.assertEqual(curve[0], (0.0, 700))
        self.assertEqual(curve[1], (0.5, 700))
        self.assertEqual(curve[-1], (1.0, 9000))
        for (p0, v0), (p1, v1) in zip(curve, curve[1:]):
            self.assertLessEqual(p0, p1)
            self.assertLessEqual(v0, v1)
        self.assertEqual(report.percentile_curve([]), [])

    def test_percentile_axis_labels(self):
        # Decades of nines label as 0%, 90%, 99%, 99.9%, 99.99%.
        labels = [report.percentile_label(n) for n in range(5)]
        self.assertEqual(labels, ["0%", "90%", "99%", "99.9%", "99.99%"])

    def test_svg_has_one_rising_line_per_measured_profile(self):
        # The plot parses as SVG, with a line per profile that has a median run, each line
        # inside the plot area and climbing (smaller y) as the percentile grows.
        root = ElementTree.fromstring(report.svg(load_results()))
        self.assertEqual(root.tag, SVG_NS + "svg")
        lines = root.findall(f"{SVG_NS}polyline")
        self.assertEqual([line.get("data-profile") for line in lines],
                         ["w128-c1-p1", "r-c16-p16"])
        frame = [r for r in root.findall(f"{SVG_NS}rect") if r.get("fill") == "none"][0]
        left, top = float(frame.get("x")), float(frame.get("y"))
        right, bottom = left + float(frame.get("width")), top + float(frame.get("height"))
        for line in lines:
            points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
            self.assertGreaterEqual(len(points), 2)
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                self.assertLessEqual(x0, x1)
                self.assertGreaterEqual(y0, y1)
            for x, y in points:
                self.assertTrue(left <= x <= right and top <= y <= bottom, (x, y))
            self.assertAlmostEqual(points[-1][0], right, places=1)
        texts = [t.text for t in root.iter(f"{SVG_NS}text")]
        for label in ("0%", "90%", "99.9%", "w128-c1-p1", "r-c16-p16", "1", "10"):
            self.assertIn(label, texts)


class RedisTests(unittest.TestCase):
    def test_csv_of_redis_benchmark(self):
        # redis-benchmark 7's --csv row becomes numbers; its warnings are skipped.
        text = (FIXTURES / "redis-benchmark.txt").read_text(encoding="utf-8")
        rows = redis.parse_csv(text)
        self.assertEqual(list(rows), ["set"])
        self.assertEqual(rows["set"]["rps"], 7299.27)
        self.assertEqual((rows["set"]["p50_ms"], rows["set"]["p99_ms"]), (11.607, 19.263))
        self.assertEqual(redis.parse_csv("Error from server: ERR unknown command\n"), {})

    def test_settings_and_command_line(self):
        # A setting name becomes redis-benchmark's -c, -P and -d; bad ones are refused.
        self.assertEqual(redis.parse_setting("c50-p16-d128"), (50, 16, 128))
        command = redis.benchmark_command(6379, "set", "c1-p1-d16", 2000, 100)
        self.assertEqual(command[command.index("-c") + 1], "1")
        self.assertEqual(command[command.index("-d") + 1], "16")
        self.assertEqual(command[-1], "--csv")
        for bad in ("c50-p16", "p1-c1-d1", "c0-p1-d1", "cx-p1-d1"):
            with self.assertRaises(ValueError, msg=bad):
                redis.parse_setting(bad)
        with self.assertRaises(ValueError):
            redis.parse_tests("set,lpush")

    def test_table_shows_ratios_and_what_was_not_measured(self):
        # Ratios are ringraft over redis; an unsupported test is a dash and a note.
        ours = {"rps": 5000.0, "p50_ms": 2.0, "p99_ms": 9.0}
        theirs = {"rps": 20000.0, "p50_ms": 1.0, "p99_ms": 3.0}
        text = redis.table([
            {"setting": "c50-p16-d128", "test": "set", "ringraft": ours, "redis": theirs},
            {"setting": "c50-p16-d128", "test": "incr",
             "ringraft": {"error": "not supported"}, "redis": theirs},
        ])
        lines = text.splitlines()
        self.assertIn("| c50-p16-d128 | SET | 5,000 | 20,000 | 0.25 | 2.000 | 1.000 | 2.00 "
                      "| 9.000 | 3.000 | 3.00 |", lines)
        self.assertIn("| c50-p16-d128 | INCR | - | 20,000 | - | - | 1.000 | - | - | 3.000 "
                      "| - |", lines)
        self.assertIn("- c50-p16-d128 incr on ringraft: not supported", lines)


class StatusTests(unittest.TestCase):
    def test_status_counts_leaders_and_nodes(self):
        # A group with leader "-" is not ready; nodes count up or down.
        text = "\n".join([
            "answered by 127.0.0.1:7101",
            " group   leader     term     commit    applied  role here",
            "     0        1        1          1          1  leader",
            "     1        -        2          1          1  pre-candidate",
            "     2        3        1          1          1  follower",
            "node 1: up", "node 2: down", "node 3: up"])
        self.assertEqual(processes.parse_status(text), (2, 3, 2, 3))

    def test_quiescent_needs_every_node_applied_and_agreeing(self):
        # A run starts only when all nodes agree on leaders and commits and applied all.
        settled = {0: ("1", 10, 10), 1: ("2", 7, 7)}
        self.assertTrue(processes.quiescent([settled, settled, dict(settled)]))
        behind = {0: ("1", 10, 9), 1: ("2", 7, 7)}
        self.assertFalse(processes.quiescent([settled, behind, settled]))
        older = {0: ("1", 9, 9), 1: ("2", 7, 7)}
        self.assertFalse(processes.quiescent([settled, older, settled]))
        leaderless = {0: (None, 10, 10), 1: ("2", 7, 7)}
        self.assertFalse(processes.quiescent([leaderless] * 3))
        self.assertFalse(processes.quiescent([settled, None, settled]))
        self.assertFalse(processes.quiescent([settled, {0: ("1", 10, 10)}, settled]))
        text = " group   leader     term     commit    applied  role here\n" \
               "     0        1        1        479        478  follower\n" \
               "     1        -        2          5          5  candidate\n"
        self.assertEqual(processes.parse_groups(text), {0: ("1", 479, 478), 1: (None, 5, 5)})


if __name__ == "__main__":
    unittest.main()
