"""Credentials out of everything a user or a log sees.

Storages, tracking servers, mirrors and hub endpoints are given as URLs, and a URL may
carry a password (`scheme://user:password@host`) or a token in its query
(`?access_token=...`). Third-party clients repeat the URL in their errors, so every
message, log line or error that can hold one passes through `redact` first; the
user name and host stay, as they are what tells which server was meant.
"""
from __future__ import annotations

import re

MASK = "***"

# the password of `scheme://user:password@`: up to the last @ before the path, so an unescaped @ in it is covered
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*):[^\s/]*@")
# a query or fragment parameter whose name says it is a credential
_PARAM = re.compile(r"(?P<head>[?&;#](?:[^=&\s#]*(?:token|key|password|passwd|pwd|secret|signature|credential|auth)"
                    r"[^=&\s#]*|sig)=)[^&;\s#]+", re.IGNORECASE)  # sig: Azure's shared-access signature


def redact(text: object) -> str:
    """`text` (a URL, an error message, anything printable) with every URL credential masked."""
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", str(text))
    return _PARAM.sub(rf"\g<head>{MASK}", text)


def one_line(e: BaseException, limit: int = 300) -> str:
    """A third-party exception as `Type: first words`, on one line and redacted: clients such as grpc,
    SQLAlchemy and MLflow put the URL, and pages of detail, in their messages."""
    text = " ".join(str(e).split())
    line = redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)
    return line if len(line) <= limit else line[:limit - 3] + "..."
