"""The aiosmtpd handler: accept a transaction, have it rewritten, forward the copies.

Unlike aiosmtpd's own ``Proxy``, this never blocks the event loop (the rewriting and the database
run in a thread, forwarding uses aiosmtplib) and never answers 250 for mail that was not forwarded:
until the durable spool exists, the client keeps the message when the upstream fails.
"""

from __future__ import annotations

import asyncio
import logging

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError

from hotclicks.models import MessageStatus

from .config import RelayConfig
from .processing import MessageProcessor, Outgoing

log = logging.getLogger("smtp_relay")

#: Replies, named so that tests and logs speak of the same thing (aiosmtpd's statuscodes style).
REPLY_OK = "250 2.0.0 OK: relayed"
REPLY_UPSTREAM_TEMPORARY = "451 4.4.1 Upstream server unavailable, try again later"
REPLY_UPSTREAM_REFUSED = "554 5.0.0 Upstream server refused the message"
REPLY_LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"

#: MAIL FROM parameters passed on to the upstream server as they came.
_PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP, accepting the long lines real mail has (some exceed RFC 5322's 998)."""

    line_length_limit = 256 * 1024


class RelayHandler:
    def __init__(self, config: RelayConfig, processor: MessageProcessor) -> None:
        self.config = config
        self.processor = processor

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes), "the relay runs aiosmtpd with decode_data=False"
        mail_from = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        try:
            copies = await asyncio.to_thread(self.processor.prepare, mail_from, recipients, raw)
        except (SQLAlchemyError, OSError):
            log.exception("cannot record the message from %s; asking the client to retry", mail_from)
            return REPLY_LOCAL_ERROR
        options = [o for o in envelope.mail_options if o.upper() in _PASSED_MAIL_OPTIONS]
        outcomes = await self._forward(mail_from, copies, options)
        for copy, (status, reply) in zip(copies, outcomes):
            log.info(
                "message %s to %s: %s %s",
                copy.message_id if copy.message_id is not None else "untracked",
                ",".join(copy.recipients),
                status.value,
                reply,
            )
            try:
                await asyncio.to_thread(self.processor.record_outcome, copy, status, reply)
            except SQLAlchemyError:
                log.exception("could not record the outcome of message %s", copy.message_id)
        statuses = {status for status, _ in outcomes}
        if statuses == {MessageStatus.SENT}:
            return REPLY_OK
        if statuses == {MessageStatus.FAILED}:
            return REPLY_UPSTREAM_REFUSED
        return REPLY_UPSTREAM_TEMPORARY

    async def _forward(
        self, mail_from: str, copies: list[Outgoing], options: list[str]
    ) -> list[tuple[MessageStatus, str]]:
        """Send every copy over one upstream connection; the outcome of each, in order."""
        host, port = self.config.upstream
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            timeout=self.config.upstream_timeout,
            start_tls=False,
            local_hostname=self.config.hostname,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            reply = f"upstream {host}:{port} unreachable: {exc}"
            return [(MessageStatus.DEFERRED, reply)] * len(copies)
        outcomes: list[tuple[MessageStatus, str]] = []
        try:
            for copy in copies:
                outcomes.append(await self._send_one(client, mail_from, copy, options))
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        return outcomes

    async def _send_one(
        self, client: aiosmtplib.SMTP, mail_from: str, copy: Outgoing, options: list[str]
    ) -> tuple[MessageStatus, str]:
        try:
            errors, reply = await client.sendmail(
                mail_from, copy.recipients, copy.data, mail_options=options
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            return self._status_of(refusal.code), f"{refusal.code} {refusal.message}"
        except aiosmtplib.SMTPResponseException as exc:
            return self._status_of(exc.code), f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            return MessageStatus.DEFERRED, f"upstream connection lost: {exc}"
        if errors:
            code, message = next(iter(errors.values()))
            return self._status_of(code), f"{code} {message}"
        return MessageStatus.SENT, reply

    @staticmethod
    def _status_of(code: int) -> MessageStatus:
        return MessageStatus.FAILED if 500 <= code < 600 else MessageStatus.DEFERRED

