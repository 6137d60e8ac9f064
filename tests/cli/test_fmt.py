"""singa_cli.fmt: the one place where the `singa` commands format durations,
times, rates, sizes, hosts and tables (list, view, top and submit's follower
print them the same way)."""
from __future__ import annotations

from singa_cli import fmt


def test_a_duration_is_h_mm_ss_and_a_missing_one_is_what_the_caller_says():
    assert fmt.dur(0) == "0:00:00"
    assert fmt.dur(3725.9) == "1:02:05"
    assert fmt.dur(90061) == "25:01:01"
    assert fmt.dur(None) == "-"
    assert fmt.dur(None, missing="0:00:00") == "0:00:00"  # submit's end report


def test_ago_steps_from_seconds_to_minutes_to_hours():
    assert fmt.ago(None, 100.0) == "-"
    assert fmt.ago(95.8, 100.0) == "4.2s ago"
    assert fmt.ago(1000.0, 1185.0) == "3m05s ago"
    assert fmt.ago(0.0, 7260.0) == "2h01m ago"
    assert fmt.ago(200.0, 100.0) == "0.0s ago"  # a clock step back is not "in the future"


def test_rates_sizes_and_steps():
    assert fmt.rate(None) == "-"
    assert fmt.rate(3.14159) == "3.14"
    assert fmt.rate(3.14159, 1) == "3.1"
    assert fmt.mem(512 * 2**20) == "512 MiB"
    assert fmt.mem(12 * 2**30) == "12.0 GiB"
    assert fmt.step(None, None) == "-"
    assert fmt.step(5, None) == "5"
    assert fmt.step(5, 100) == "5/100"


def test_hosts_are_short_distinct_and_cut_with_a_count():
    assert fmt.short_host("node1.cluster.example.org") == "node1"
    assert fmt.short_host("10.0.0.7") == "10.0.0.7"
    assert fmt.hosts([]) == "-"
    assert fmt.hosts(["a.x", "a.x", "b.x"]) == "a,b"
    assert fmt.hosts([f"node{i}" for i in range(10)], width=20) == "node0,node1,node2 +7"


def test_a_table_aligns_columns_and_ends_no_line_with_blanks():
    assert fmt.table(["ID", "NAME"], [["1", "mnist"], ["12", "-"]]) == (
        "ID  NAME\n"
        "1   mnist\n"
        "12  -")
