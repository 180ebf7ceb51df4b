"""DKIM signing after rewriting (dkimpy): a rewritten message keeps a valid signature."""

from __future__ import annotations

from hotclicks.errors import ConfigurationError

__all__ = ["SIGNED_HEADERS", "DkimSigner"]

#: The header fields signed, when present (RFC 6376 section 5.4.1's recommendations).
SIGNED_HEADERS = (
    b"From", b"Sender", b"Reply-To", b"Subject", b"Date", b"Message-ID", b"To", b"Cc",
    b"MIME-Version", b"Content-Type", b"Content-Transfer-Encoding", b"In-Reply-To",
    b"References", b"List-Unsubscribe", b"List-Unsubscribe-Post",
)


class DkimSigner:
    """Signs messages with one key; built at start, so a missing key or module fails then.

    Picklable (the key's bytes, not the dkimpy module), so rewrite workers sign the copies they
    render.
    """

    def __init__(self, key_file: str, selector: str, domain: str) -> None:
        try:
            import dkim
        except ModuleNotFoundError:
            raise ConfigurationError("DKIM signing needs dkimpy: pip install 'hotclicks[dkim]'") from None
        try:
            with open(key_file, "rb") as file:
                self._key = file.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the DKIM key --dkim-key-file {key_file!r}: {exc}") from None
        self._dkim = dkim
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        try:  # sign something now: a key that is not a private key fails at start, not per message
            self.sign(b"From: a@example.org\r\nSubject: test\r\n\r\ntest\r\n")
        except dkim.DKIMException as exc:
            raise ConfigurationError(f"the DKIM key {key_file!r} cannot sign: {exc}") from None

    def __getstate__(self) -> dict[str, object]:
        return {name: value for name, value in vars(self).items() if name != "_dkim"}

    def __setstate__(self, state: dict[str, object]) -> None:
        import dkim

        vars(self).update(state)
        self._dkim = dkim

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature field prepended."""
        signature = self._dkim.sign(
            data,
            self.selector,
            self.domain,
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
        )
        if b"\r\n" not in data[:4096] and b"\n" in data:
            signature = signature.replace(b"\r\n", b"\n")
        return signature + data
