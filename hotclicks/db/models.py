"""The HotClicks schema: every table both halves share, in one place.

The words are PRODUCT.md's: a *delivery* is a named mailing, an *execution* one run of it, a
*tracked URL* one link of one execution, a *message* what one recipient was sent in one
execution. Clicks, opens and opt-outs hang off messages. Schema changes go through the Alembic
migrations in ``migrations/``; a test keeps the two in step.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..enums import DeliveryType, MessageStatus

#: Constraint names Alembic can rely on, the same on every database (Alembic's naming.rst).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Row ids: 64-bit on PostgreSQL, SQLite's own INTEGER PRIMARY KEY there (it is 64-bit already).
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime stored)."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no time zones, so without this a value written aware would come back naive.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("HotClicks stores timezone-aware datetimes only")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """A portable enum column that stores the values users see ("one-off"), not member names."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=20,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Delivery(Base):
    """A named mailing: a newsletter, a recurring digest, a transactional template."""

    __tablename__ = "hotclicks_delivery"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[DeliveryType] = mapped_column(_enum(DeliveryType, "hotclicks_delivery_type"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    executions: Mapped[list[Execution]] = relationship(
        back_populates="delivery", order_by="Execution.id"
    )


class Execution(Base):
    """One run of a delivery; its tracked URLs are its own, so hot clicks never sum across runs.

    ``key`` is what makes the execution unique within its delivery (see ``hotclicks.executions``):
    two relays seeing the first message of a new run at once insert the same key, and the unique
    constraint lets only one of them win.
    """

    __tablename__ = "hotclicks_execution"
    __table_args__ = (UniqueConstraint("delivery_id", "key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_delivery.id"), index=True)
    key: Mapped[str] = mapped_column(String(400))
    run_key: Mapped[str | None] = mapped_column(String(200))
    period: Mapped[str | None] = mapped_column(String(20))
    version: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_message_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    delivery: Mapped[Delivery] = relationship(back_populates="executions")
    tracked_urls: Mapped[list[TrackedUrl]] = relationship(
        back_populates="execution", order_by="TrackedUrl.position"
    )


class TrackedUrl(Base):
    """One link of one execution.

    ``link_key`` is the link's identity inside the execution: an explicit name, or the target
    without personal query parameters plus its occurrence (``hotclicks.rewrite``). Tracked URLs are
    never purged, so a link keeps working however old the email.
    """

    __tablename__ = "hotclicks_tracked_url"
    __table_args__ = (UniqueConstraint("execution_id", "part", "key_digest"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    part: Mapped[str] = mapped_column(String(10))  #: "html" or "text"
    link_key: Mapped[str] = mapped_column(Text)
    #: A digest of ``link_key`` for the unique constraint: keys can outgrow an index entry.
    key_digest: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(200), default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    execution: Mapped[Execution] = relationship(back_populates="tracked_urls")


class Recipient(Base):
    """An address mail was sent to, with the sender's own id for it when given."""

    __tablename__ = "hotclicks_recipient"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), index=True)
    #: The recipient asked not to be tracked: their clicks still count, but anonymously.
    tracking_opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ContentVariant(Base):
    """One version of dynamic content inside an execution, told apart by its set of links.

    The relay keeps one sample of each (from a test profile's copy when there is one), so the
    hot clicks report can show content even when the host app registers no preview renderer.
    """

    __tablename__ = "hotclicks_content_variant"
    __table_args__ = (UniqueConstraint("execution_id", "signature"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    signature: Mapped[str] = mapped_column(String(64))
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    sample_source: Mapped[str] = mapped_column(String(20), default="recipient")
    test_profile_id: Mapped[int | None] = mapped_column(ForeignKey("hotclicks_test_profile.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProfileCopy(Base):
    """The content a test profile received in one execution, kept whole for the hot clicks report.

    A variant keeps one sample; personalised content (a greeting, a price) differs inside a
    variant, so each test profile's own copy is kept beside it, one row per message it was sent.
    """

    __tablename__ = "hotclicks_profile_copy"
    __table_args__ = (
        Index("ix_hotclicks_profile_copy_execution_id_test_profile_id", "execution_id", "test_profile_id"),
    )

    message_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_message.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"))
    test_profile_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_test_profile.id"))
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Message(Base):
    """What one recipient was sent in one execution: a line of the broad log."""

    __tablename__ = "hotclicks_message"
    #: The messages of an execution not (yet) accepted, found without reading the accepted ones
    #: (the delivered per recipient domain).
    __table_args__ = (Index("ix_hotclicks_message_execution_id_status", "execution_id", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_recipient.id"), index=True)
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("hotclicks_content_variant.id"))
    status: Mapped[MessageStatus] = mapped_column(
        _enum(MessageStatus, "hotclicks_message_status"), default=MessageStatus.QUEUED
    )
    status_reply: Mapped[str | None] = mapped_column(Text)
    message_id_header: Mapped[str | None] = mapped_column(String(998))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column()

    execution: Mapped[Execution] = relationship()
    recipient: Mapped[Recipient] = relationship()


class Click(Base):
    """A click on a tracked link, by a person or, flagged as such, by a machine.

    ``message_id`` is None for the clicks of a recipient who opted out of tracking: the link's
    figures count them, nobody's history shows them.
    """

    __tablename__ = "hotclicks_click"
    __table_args__ = (
        Index("ix_hotclicks_click_tracked_url_id_message_id", "tracked_url_id", "message_id"),
        # The fleet rule reads one client's clicks of the last day (hotclicks.db.events).
        Index("ix_hotclicks_click_ip_clicked_at", "ip", "clicked_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("hotclicks_message.id"), index=True)
    tracked_url_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_tracked_url.id"))
    clicked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str | None] = mapped_column(String(500))
    ip: Mapped[str | None] = mapped_column(String(64))
    is_machine: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Why the bot rules judged it a machine's (``hotclicks.bots``' reasons); a people's event
    #: may carry a note too (an open through Gmail's image proxy: ``proxy``).
    machine_reason: Mapped[str | None] = mapped_column(String(100))
    #: The named network list the client's address was in (``hotclicks.networks``); the address
    #: itself is only stored as the privacy settings allow.
    network: Mapped[str | None] = mapped_column(String(64))
    #: The device family read from the user agent at click time (``hotclicks.devices``): kept
    #: when the user agent itself is not stored. None for clicks recorded before it was read.
    device: Mapped[str | None] = mapped_column(String(10))


class Open(Base):
    """An open, seen through the open pixel."""

    __tablename__ = "hotclicks_open"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_message.id"), index=True)
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str | None] = mapped_column(String(500))
    ip: Mapped[str | None] = mapped_column(String(64))
    is_machine: Mapped[bool] = mapped_column(Boolean, default=False)
    machine_reason: Mapped[str | None] = mapped_column(String(100))
    network: Mapped[str | None] = mapped_column(String(64))


class OptOut(Base):
    """A recipient's unsubscribe; ``cancelled_at`` is set when they resubscribe."""

    __tablename__ = "hotclicks_opt_out"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_recipient.id"), index=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("hotclicks_message.id"))
    source: Mapped[str] = mapped_column(String(20))  #: "link", "one-click", "api"
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column()


class TestProfile(Base):
    """A named kind of recipient (gender, birth date, ...) used to view dynamic content."""

    __tablename__ = "hotclicks_test_profile"
    __test__ = False  # not a pytest test class, whatever its name

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RelayIncident(Base):
    """Something the relay did that an operator should be able to look up later.

    A message forwarded unchanged because it could not be parsed, a DKIM-signed message left
    alone or re-signed, a copy given up after its retries: one row each, with the reason.
    """

    __tablename__ = "hotclicks_relay_incident"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("hotclicks_message.id"))
    message_id_header: Mapped[str | None] = mapped_column(String(998))
    mail_from: Mapped[str | None] = mapped_column(String(320))
    recipients: Mapped[str | None] = mapped_column(Text)


class RelayAccount(Base):
    """A login allowed to send through the relay with SMTP AUTH (``hotclicks-relay accounts``).

    Only the scrypt hash of the password is stored. A disabled account is kept, not deleted, so
    the login is not silently reused and the operator sees when it was turned off.
    """

    __tablename__ = "hotclicks_relay_account"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    login: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column()


class RelayCounter(Base):
    """Per-day counts of what the relay saw but did not track (untracked messages, ...)."""

    __tablename__ = "hotclicks_relay_counter"
    __table_args__ = (UniqueConstraint("day", "name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    day: Mapped[str] = mapped_column(String(10))  #: YYYY-MM-DD, UTC
    name: Mapped[str] = mapped_column(String(40))
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# -- report aggregates ---------------------------------------------------------------------------
#
# The reports read these instead of counting raw clicks, so that their cost grows with the number
# of links, not of clicks. They are brought up to date by ``hotclicks.db.rollup.roll_up`` from a
# watermark (the last click, open and message id folded in); the click path stays a single insert.
# See ``hotclicks/db/rollup.py`` for how rows that commit out of id order are waited for.


class RollupState(Base):
    """How far one source table (``click``, ``open``, ``message``) is folded into the aggregates.

    Rows with ``id <= watermark`` are counted in the aggregates; newer ones are counted live by
    the reports. ``pending_upto`` is the largest id seen at ``pending_at``: once every transaction
    that could hold a smaller id has ended (a settle delay later) it becomes the next watermark.
    """

    __tablename__ = "hotclicks_rollup_state"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_upto: Mapped[int | None] = mapped_column(BigInteger)
    pending_at: Mapped[dt.datetime | None] = mapped_column()
    updated_at: Mapped[dt.datetime | None] = mapped_column()


class LinkStats(Base):
    """One tracked URL's folded figures: clicks by people and machines, distinct clickers."""

    __tablename__ = "hotclicks_link_stats"

    tracked_url_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_tracked_url.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)  #: people's clicks (anonymous ones too)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    clickers: Mapped[int] = mapped_column(BigInteger, default=0)  #: messages with a people's click
    all_clickers: Mapped[int] = mapped_column(BigInteger, default=0)  #: messages with any click
    last_click_at: Mapped[dt.datetime | None] = mapped_column()


class LinkClicker(Base):
    """The clicks of one message on one tracked URL: what makes "unique clickers" incremental."""

    __tablename__ = "hotclicks_link_clicker"

    tracked_url_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_tracked_url.id"), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_message.id"), primary_key=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)


class MessageStats(Base):
    """One message's folded clicks and opens: what makes clickers and openers incremental."""

    __tablename__ = "hotclicks_message_stats"

    message_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_message.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    opens: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_opens: Mapped[int] = mapped_column(BigInteger, default=0)


class ExecutionStats(Base):
    """One execution's folded figures (message statuses change, so they are counted live)."""

    __tablename__ = "hotclicks_execution_stats"

    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), primary_key=True)
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    clickers: Mapped[int] = mapped_column(BigInteger, default=0)
    all_clickers: Mapped[int] = mapped_column(BigInteger, default=0)
    opens: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_opens: Mapped[int] = mapped_column(BigInteger, default=0)
    openers: Mapped[int] = mapped_column(BigInteger, default=0)
    all_openers: Mapped[int] = mapped_column(BigInteger, default=0)


class VariantStats(Base):
    """One content variant's folded recipients and clicks (for its share in the hot clicks)."""

    __tablename__ = "hotclicks_variant_stats"

    variant_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_content_variant.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), index=True)
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)


class ClickBucket(Base):
    """Clicks on one tracked URL in one hour (hours since the Unix epoch, UTC): click streams."""

    __tablename__ = "hotclicks_click_bucket"

    tracked_url_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_tracked_url.id"), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)


class ReasonStats(Base):
    """How many of one execution's clicks or opens carry one bot-rule reason (``machine_reason``):
    the machine share per reason that the delivery page shows."""

    __tablename__ = "hotclicks_reason_stats"

    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(10), primary_key=True)  #: "click" or "open"
    reason: Mapped[str] = mapped_column(String(100), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, default=0)


class DeviceStats(Base):
    """Clicks on one tracked URL from one device family (``hotclicks.devices``; clicks recorded
    before the family was read count as ``unknown``): the hot clicks filtered by device."""

    __tablename__ = "hotclicks_device_stats"

    tracked_url_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_tracked_url.id"), primary_key=True)
    device: Mapped[str] = mapped_column(String(10), primary_key=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)


class DomainStats(Base):
    """One execution's folded figures per recipient domain (the part of the address after its
    ``@``): messages handed to the relay (suppressed ones aside), people's openers and clickers.
    Statuses change after the fact: the delivered are read through the (execution, status) index."""

    __tablename__ = "hotclicks_domain_stats"

    execution_id: Mapped[int] = mapped_column(ForeignKey("hotclicks_execution.id"), primary_key=True)
    domain: Mapped[str] = mapped_column(String(320), primary_key=True)
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    openers: Mapped[int] = mapped_column(BigInteger, default=0)
    clickers: Mapped[int] = mapped_column(BigInteger, default=0)
