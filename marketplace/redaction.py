"""Secrets out of what we write down: a URL as logs, failure records and admin pages may show it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` without what may be a credential: the user and password before the host, every
    query parameter's value and the fragment become ``***``; scheme, host, port and path stay
    (a secret in the path itself cannot be told apart from a route)."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc and not parts.query and not parts.fragment:
            return url  # nothing to hide: shown as written (urlsplit drops tabs and newlines, say)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        query = urlencode([(name, REDACTED) for name, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        if parts.query and not query:  # a bare ?token with no "="
            query = REDACTED
        return urlunsplit((parts.scheme, netloc, parts.path, query, REDACTED if parts.fragment else ""))
    except ValueError:
        return f"<a URL that cannot be parsed, {len(url)} characters>"
