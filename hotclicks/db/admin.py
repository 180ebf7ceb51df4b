"""Administration: test profiles, the relay's SMTP accounts, and the retention purge."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import HotClicksError
from .models import Click, ContentVariant, Open, OptOut, ProfileCopy, RelayAccount, TestProfile, utcnow

__all__ = [
    "AccountError",
    "ProfileError",
    "add_relay_account",
    "create_profile",
    "delete_profile",
    "disable_relay_account",
    "get_profile",
    "list_profiles",
    "purge_events",
    "relay_accounts",
    "relay_password_hash",
    "update_profile",
]


# -- test profiles --------------------------------------------------------------------------------


class ProfileError(HotClicksError, ValueError):
    """A test profile cannot be created or changed as asked; the text says why."""


def list_profiles(session: Session) -> list[TestProfile]:
    return list(session.scalars(select(TestProfile).order_by(TestProfile.name)))


def get_profile(session: Session, name_or_id: str | int) -> TestProfile | None:
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        found = session.get(TestProfile, int(name_or_id))
        if found is not None:
            return found
    return session.scalars(select(TestProfile).where(TestProfile.name == str(name_or_id))).first()


def _check_profile(session: Session, name: str, address: str, exclude: int | None = None) -> None:
    if not name.strip():
        raise ProfileError("a test profile needs a name")
    if "@" not in address:
        raise ProfileError(f"{address!r} is not an email address")
    clash = session.scalars(
        select(TestProfile).where(
            or_(TestProfile.name == name, TestProfile.address == address),
            TestProfile.id != (exclude if exclude is not None else -1),
        )
    ).first()
    if clash is not None:
        what = "name" if clash.name == name else "address"
        raise ProfileError(f"the test profile {clash.name!r} already has this {what}")


def create_profile(
    session: Session, name: str, address: str, attributes: Mapping[str, Any] | None = None
) -> TestProfile:
    """A new test profile; ``ProfileError`` when its name or address is taken."""
    name, address = name.strip(), address.strip().lower()
    _check_profile(session, name, address)
    profile = TestProfile(name=name, address=address, attributes=dict(attributes or {}), created_at=utcnow())
    session.add(profile)
    try:
        session.flush()
    except IntegrityError:  # created by someone else meanwhile
        raise ProfileError(f"a test profile named {name!r} or with address {address} exists") from None
    return profile


def update_profile(
    session: Session,
    name_or_id: str | int,
    *,
    name: str | None = None,
    address: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    remove: Iterable[str] = (),
    replace_attributes: bool = False,
) -> TestProfile:
    """Change a test profile: rename it, change its address, set or remove attributes."""
    profile = get_profile(session, name_or_id)
    if profile is None:
        raise ProfileError(f"no test profile {name_or_id!r}")
    new_name = name.strip() if name is not None else profile.name
    new_address = address.strip().lower() if address is not None else profile.address
    _check_profile(session, new_name, new_address, exclude=profile.id)
    values = {} if replace_attributes else dict(profile.attributes or {})
    values.update(attributes or {})
    for key in remove:
        values.pop(key, None)
    profile.name, profile.address, profile.attributes = new_name, new_address, values
    session.flush()
    return profile


def delete_profile(session: Session, name_or_id: str | int) -> None:
    profile = get_profile(session, name_or_id)
    if profile is None:
        raise ProfileError(f"no test profile {name_or_id!r}")
    session.execute(
        update(ContentVariant).where(ContentVariant.test_profile_id == profile.id).values(test_profile_id=None)
    )
    session.execute(delete(ProfileCopy).where(ProfileCopy.test_profile_id == profile.id))
    session.delete(profile)
    session.flush()


# -- relay accounts (SMTP AUTH) ------------------------------------------------------------------


class AccountError(HotClicksError, ValueError):
    """A relay account cannot be created or changed as asked; the text says why."""


def relay_accounts(session: Session) -> list[RelayAccount]:
    return list(session.scalars(select(RelayAccount).order_by(RelayAccount.login)))


def add_relay_account(session: Session, login: str, password_hash: str, *, replace: bool = False) -> RelayAccount:
    """A new account (or, with ``replace``, a new password for an existing one, enabled again).

    Takes the hash, not the password: hashing belongs to the relay, the store never sees secrets.
    """
    if not login or login != login.strip() or any(not c.isprintable() for c in login) or len(login) > 200:
        raise AccountError(f"{login!r} is not a usable login (printable, no surrounding spaces, at most 200 characters)")
    account = session.scalars(select(RelayAccount).where(RelayAccount.login == login)).first()
    if account is None:
        account = RelayAccount(login=login, password_hash=password_hash, created_at=utcnow())
        session.add(account)
    elif replace:
        account.password_hash, account.disabled_at = password_hash, None
    else:
        raise AccountError(f"the account {login!r} exists already (add --replace to set a new password)")
    session.flush()
    return account


def disable_relay_account(session: Session, login: str) -> RelayAccount:
    account = session.scalars(select(RelayAccount).where(RelayAccount.login == login)).first()
    if account is None:
        raise AccountError(f"no account {login!r}")
    if account.disabled_at is None:
        account.disabled_at = utcnow()
        session.flush()
    return account


def relay_password_hash(session: Session, login: str) -> str | None:
    """The password hash of an enabled account, or None (no such login, or disabled)."""
    return session.scalar(
        select(RelayAccount.password_hash).where(RelayAccount.login == login, RelayAccount.disabled_at.is_(None))
    )



# -- retention -----------------------------------------------------------------------------------


def purge_events(session: Session, before: dt.datetime) -> dict[str, int]:
    """Delete clicks and opens older than ``before`` and opt-outs cancelled before it.

    Tracked URLs, messages and opt-outs in force are kept: old links keep working and
    unsubscribed people stay unsubscribed.
    """
    counts = {}
    counts["clicks"] = session.execute(delete(Click).where(Click.clicked_at < before)).rowcount or 0
    counts["opens"] = session.execute(delete(Open).where(Open.opened_at < before)).rowcount or 0
    counts["cancelled opt-outs"] = (
        session.execute(
            delete(OptOut).where(OptOut.cancelled_at.is_not(None), OptOut.cancelled_at < before)
        ).rowcount
        or 0
    )
    return counts
