"""specs/units.py: the one reader and writer of sizes and durations, and the places that use it."""

from __future__ import annotations

import click
import pytest

from llmos.specs.units import (exact_size, format_duration, format_latency, format_size, parse_duration,
                               parse_size)
from llmos.userland.cli.users import parse_quotas, shown_quota


@pytest.mark.parametrize("text, n", [("4 GiB", 4 << 30), ("512MiB", 512 << 20), ("1.5G", 3 << 29), ("8gb", 8 * 10**9),
                                     ("100kB", 100_000), ("7", 7), (" 2 TiB ", 2 << 40), (1048576, 1 << 20)])
def test_sizes_are_read_in_binary_and_decimal_units(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["lots", "4 GiBs", "-1GiB", "", True, -5, 1.5, None])
def test_what_is_no_size_is_refused_saying_how_to_write_one(bad):
    with pytest.raises(ValueError, match="512MiB"):
        parse_size(bad)


@pytest.mark.parametrize("text, s", [("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("250ms", 0.25), ("2d", 172800.0),
                                     ("12", 12.0), (600, 600.0), (0.5, 0.5)])
def test_durations_are_read_in_seconds_minutes_and_hours(text, s):
    assert parse_duration(text) == s


@pytest.mark.parametrize("bad", ["soon", "5 weeks", "-3s", False, -1])
def test_what_is_no_duration_is_refused_saying_how_to_write_one(bad):
    with pytest.raises(ValueError, match="30s"):
        parse_duration(bad)


def test_sizes_and_durations_are_shown_for_people():
    assert [format_size(n) for n in (512, 1536, 3 << 30, 5 << 40)] == ["512 B", "1.5 KiB", "3.0 GiB", "5.0 TiB"]
    assert format_size(135 << 20, 2) == "135.00 MiB"
    assert [exact_size(n) for n in (1 << 30, 512 << 20, 1000, 0)] == ["1GiB", "512MiB", "1000", "0"]
    assert [format_duration(s) for s in (42, 185, 7620, 273600)] == ["42s", "3m05s", "2h07m", "3d04h"]
    assert [format_latency(s) for s in (None, 0.00085, 0.012, 1.25)] == ["-", "850us", "12ms", "1.25s"]


def test_the_user_command_reads_and_shows_quotas_through_units():
    """`llmos user add --quota` takes what the config takes ("1.5G" included), and prints sizes back exactly."""
    assert parse_quotas(None, None, ("mem_bytes=1.5G", "requests=8", "reserve_bytes=50%")) == \
        {"mem_bytes": 3 << 29, "requests": 8, "reserve_bytes": "50%"}
    with pytest.raises(click.BadParameter, match="got 'mem_bytes=lots'"):
        parse_quotas(None, None, ("mem_bytes=lots",))
    assert shown_quota("mem_bytes", 1 << 30) == "mem_bytes=1GiB" and shown_quota("requests", 8) == "requests=8"
