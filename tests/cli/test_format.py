from datetime import UTC, datetime, timedelta

import pytest

from appliance.cli.format import human_bytes, human_time, parse_time, table


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1 KB"), (1500, "1.5 KB"), (98_362_432, "98 MB"),
    (2_019_393_189, "2.0 GB"), (4_683_075_271, "4.7 GB"), (10_000_000_000, "10 GB"), (1_000_000, "1 MB"),
])
def test_human_bytes_matches_ollama(n, text):
    assert human_bytes(n) == text


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=0.5), "Less than a second ago"), (timedelta(seconds=1), "1 second ago"),
    (timedelta(seconds=42), "42 seconds ago"), (timedelta(seconds=90), "About a minute ago"),
    (timedelta(minutes=5), "5 minutes ago"), (timedelta(minutes=61), "About an hour ago"),
    (timedelta(hours=30), "30 hours ago"), (timedelta(days=3), "3 days ago"),
    (timedelta(days=20), "2 weeks ago"), (timedelta(days=90), "3 months ago"), (timedelta(days=800), "2 years ago"),
    (-timedelta(minutes=4, seconds=30), "4 minutes from now"), (-timedelta(days=365 * 300), "Forever"),
])
def test_human_time_matches_ollama(delta, text):
    assert human_time(NOW - delta, now=NOW) == text


def test_parse_go_timestamps():
    assert parse_time("2025-05-10T08:06:48.639712648-07:00") == datetime(2025, 5, 10, 15, 6, 48, 639712, tzinfo=UTC)
    assert parse_time("2026-11-22T04:58:18.270357Z").tzinfo is not None
    assert human_time(None) == "Never"


def test_table_is_left_aligned_with_four_space_gaps():
    out = table(["NAME", "ID"], [["smollm2:135m", "abc"], ["x", "defghi"]])
    assert out.splitlines() == ["NAME            ID", "smollm2:135m    abc", "x               defghi"]
