"""The shop's own data: its subscribers, with the attributes its dynamic content depends on."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, Engine, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Subscriber(Base):
    __tablename__ = "example_subscriber"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    gender: Mapped[str | None] = mapped_column(String(10))  #: "female", "male" or None
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    wants_digest: Mapped[bool] = mapped_column(default=False)

    def age(self, today: dt.date) -> int | None:
        return age(self.birth_date, today)

    def attributes(self) -> dict[str, str | None]:
        return {
            "gender": self.gender,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
        }


def age(birth_date: dt.date | None, today: dt.date) -> int | None:
    if birth_date is None:
        return None
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - before_birthday


def create_tables(engine: Engine) -> None:
    """The example's own tables (HotClicks' tables come from its migrations)."""
    Base.metadata.create_all(engine)
