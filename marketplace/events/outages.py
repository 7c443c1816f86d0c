"""What counts as our own database being unavailable, rather than refusing what we asked.

An outage is waited out (a subscriber's event, the recorder's dead letters) without spending
retries or parking anything; a refusal is a failure of that one message.
"""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError, OperationalError

# SQLSTATEs with which the server ended the session, not the statement: the transaction is gone
# with the connection (idle-in-transaction timeout, admin or crash shutdown, cannot connect now).
SESSION_ENDED = frozenset({"25P03", "57P01", "57P02", "57P03"})


def is_database_outage(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if not isinstance(exc, DatabaseError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    return sqlstate in SESSION_ENDED or sqlstate.startswith("08")  # class 08: connection exception
