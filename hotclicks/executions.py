"""Which execution a message belongs to: PRODUCT.md's rules as plain functions.

Senders mark messages with ``X-HotClicks-*`` headers. From them, the time, and the delivery's
latest execution, :func:`execution_for` computes an :class:`ExecutionKey`; its ``key`` string is
unique per delivery in the database, so two relays that compute the same key share one execution.

- one-off: one execution per content version;
- recurring: one per run (``X-HotClicks-Run``), and a new one when the version changes within a
  run; without a run header, a quiet gap with no message starts a new run;
- transactional: one per period (a calendar month in UTC by default) and a new one whenever the
  template is republished (a new version).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .enums import DeliveryType

HEADER_DELIVERY = "X-HotClicks-Delivery"
HEADER_TYPE = "X-HotClicks-Type"
HEADER_RUN = "X-HotClicks-Run"
HEADER_VERSION = "X-HotClicks-Version"
HEADER_RECIPIENT = "X-HotClicks-Recipient"
#: Every header the relay reads and strips before forwarding.
HEADERS = (HEADER_DELIVERY, HEADER_TYPE, HEADER_RUN, HEADER_VERSION, HEADER_RECIPIENT)

#: The transactional periods one can configure.
PERIODS = ("day", "week", "month")
#: Without a run header, this long without a message for a recurring delivery starts a new run.
DEFAULT_QUIET_GAP = dt.timedelta(hours=1)

_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class MarkError(ValueError):
    """A message's X-HotClicks-* headers are present but unusable; the text says which."""


@dataclass(frozen=True, slots=True)
class Marks:
    """What a sender's headers say about a message."""

    delivery: str
    type: DeliveryType = DeliveryType.ONE_OFF
    run: str | None = None
    version: str | None = None
    recipient_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionKey:
    key: str
    run_key: str | None = None
    period: str | None = None
    version: str | None = None


def _clean(value: str | None, what: str, limit: int = 200) -> str | None:
    if value is None:
        return None
    value = " ".join(str(value).split())
    if not value:
        return None
    if len(value) > limit:
        raise MarkError(f"{what} is longer than {limit} characters")
    return value


def read_marks(headers: Mapping[str, str] | object) -> Marks | None:
    """The marks of a message's headers, or None when it carries no ``X-HotClicks-Delivery``.

    ``headers`` is anything with a case-insensitive ``get`` (``email.message.Message`` or a
    plain dict with the exact header names).
    """
    get = headers.get  # type: ignore[attr-defined]
    delivery = _clean(get(HEADER_DELIVERY), HEADER_DELIVERY)
    if delivery is None:
        return None
    if not _CODE.match(delivery):
        raise MarkError(
            f"{HEADER_DELIVERY} {delivery!r} is not a delivery code "
            "(letters, digits and . _ : / @ + -, up to 200 characters)"
        )
    type_value = _clean(get(HEADER_TYPE), HEADER_TYPE) or DeliveryType.ONE_OFF.value
    try:
        delivery_type = DeliveryType(type_value.lower())
    except ValueError:
        allowed = ", ".join(t.value for t in DeliveryType)
        raise MarkError(f"{HEADER_TYPE} {type_value!r} is not one of {allowed}") from None
    return Marks(
        delivery=delivery,
        type=delivery_type,
        run=_clean(get(HEADER_RUN), HEADER_RUN),
        version=_clean(get(HEADER_VERSION), HEADER_VERSION),
        recipient_id=_clean(get(HEADER_RECIPIENT), HEADER_RECIPIENT),
    )


def period_of(moment: dt.datetime, period: str = "month") -> str:
    """The name of the transactional period ``moment`` falls in, in UTC."""
    moment = moment.astimezone(dt.timezone.utc)
    if period == "month":
        return moment.strftime("%Y-%m")
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")


@dataclass(frozen=True, slots=True)
class LatestExecution:
    """What the rules need to know of a delivery's latest execution."""

    run_key: str | None
    version: str | None
    last_message_at: dt.datetime


def execution_for(
    marks: Marks,
    now: dt.datetime,
    *,
    latest: LatestExecution | None = None,
    period: str = "month",
    quiet_gap: dt.timedelta = DEFAULT_QUIET_GAP,
) -> ExecutionKey:
    """The execution a message with ``marks`` sent at ``now`` belongs to."""
    version = marks.version
    v = f"v:{version or ''}"
    if marks.type is DeliveryType.ONE_OFF:
        return ExecutionKey(key=v, version=version)
    if marks.type is DeliveryType.TRANSACTIONAL:
        name = period_of(now, period)
        return ExecutionKey(key=f"period:{name}|{v}", period=name, version=version)
    run = marks.run
    if run is None:
        # No run named by the sender: a run goes on while messages keep coming.
        if (
            latest is not None
            and latest.run_key is not None
            and latest.run_key.startswith("auto:")
            and now - latest.last_message_at <= quiet_gap
        ):
            run = latest.run_key.removeprefix("auto:")
        else:
            run = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        run_key = f"auto:{run}"
    else:
        run_key = run
    return ExecutionKey(key=f"run:{run_key}|{v}", run_key=run_key, version=version)
