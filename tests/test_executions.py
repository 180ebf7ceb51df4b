"""Execution rules: which execution a message belongs to (time injected, never slept)."""

from __future__ import annotations

import datetime as dt

import pytest

from hotclicks.executions import (
    LatestExecution,
    MarkError,
    Marks,
    execution_for,
    period_of,
    read_marks,
)
from hotclicks.db.models import DeliveryType

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc)


def test_a_message_without_a_delivery_header_is_not_tracked():
    assert read_marks({"Subject": "hi"}) is None


def test_marks_are_read_from_headers_with_one_off_as_the_default_type():
    marks = read_marks({"X-HotClicks-Delivery": "spring-news", "X-HotClicks-Recipient": " 42 "})
    assert marks == Marks("spring-news", DeliveryType.ONE_OFF, recipient_id="42")


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"X-HotClicks-Delivery": "no spaces allowed"}, "not a delivery code"),
        ({"X-HotClicks-Delivery": "d", "X-HotClicks-Type": "weekly"}, "not one of"),
        ({"X-HotClicks-Delivery": "d", "X-HotClicks-Run": "r" * 201}, "longer than"),
    ],
)
def test_unusable_marks_say_what_is_wrong(headers, message):
    with pytest.raises(MarkError, match=message):
        read_marks(headers)


def test_one_off_has_one_execution_per_content_version():
    first = execution_for(Marks("d"), T0)
    assert execution_for(Marks("d"), T0 + dt.timedelta(days=30)) == first
    assert execution_for(Marks("d", version="2"), T0).key != first.key


def test_transactional_has_one_execution_per_month_and_per_republish():
    marks = Marks("receipt", DeliveryType.TRANSACTIONAL, version="a1")
    november = execution_for(marks, T0)
    assert november.period == "2026-11"
    assert execution_for(marks, T0 + dt.timedelta(days=6)) == november
    december = execution_for(marks, dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    assert december.key != november.key and december.period == "2026-12"
    republished = execution_for(Marks("receipt", DeliveryType.TRANSACTIONAL, version="b2"), T0)
    assert republished.key != november.key and republished.period == "2026-11"


@pytest.mark.parametrize(
    "period, expected", [("day", "2026-11-23"), ("week", "2026-W48"), ("month", "2026-11")]
)
def test_transactional_periods_are_configurable(period, expected):
    assert period_of(T0, period) == expected
    marks = Marks("receipt", DeliveryType.TRANSACTIONAL)
    assert execution_for(marks, T0, period=period).period == expected


def test_recurring_has_one_execution_per_run_and_per_content_update():
    run1 = execution_for(Marks("digest", DeliveryType.RECURRING, run="2026-W48"), T0)
    assert run1.run_key == "2026-W48"
    run2 = execution_for(Marks("digest", DeliveryType.RECURRING, run="2026-W49"), T0)
    updated = execution_for(
        Marks("digest", DeliveryType.RECURRING, run="2026-W48", version="2"), T0
    )
    assert len({run1.key, run2.key, updated.key}) == 3
    assert updated.run_key == run1.run_key


def test_recurring_without_a_run_header_cuts_runs_at_a_quiet_gap():
    marks = Marks("digest", DeliveryType.RECURRING)
    first = execution_for(marks, T0)
    latest = LatestExecution(first.run_key, None, T0 + dt.timedelta(minutes=20))
    same = execution_for(marks, T0 + dt.timedelta(minutes=50), latest=latest)
    assert same == first
    later = execution_for(marks, T0 + dt.timedelta(hours=2), latest=latest)
    assert later.key != first.key
    shorter = execution_for(
        marks, T0 + dt.timedelta(minutes=50), latest=latest, quiet_gap=dt.timedelta(minutes=10)
    )
    assert shorter.key != first.key
