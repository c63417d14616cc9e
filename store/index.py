"""The mail index: picks the compiled implementation or the pure-Python reference.

MAILHOUSE_PURE_PYTHON=1 forces store._index_py; otherwise store._index (Cython) is used when
it was built, else the reference. IMPL names the one in use (workers log it once at start).
Interface (both implementations, see store/_index_py.py for the details):
  Index(path) with open_view / create_mailbox / delete_mailbox / rename_mailbox / mailboxes /
  mailbox / set_mailbox_attributes / reserve_uid / append / store_flags / expunge /
  changes_since / expunged_since / usage / recount_usage / users / prune_deliveries;
  View (len, uid, seq, uids, record, resolve, uid_ranges, search, sort, changed_since, diff);
  parse_sequence_set(text, largest); flag_names; ranges_from_values.
Diagnostics: an unusable compiled module falls back silently only when it is absent
(ImportError); MAILHOUSE_REQUIRE_EXT=1 turns its absence into an error.
"""
from __future__ import annotations

import os

from store._index_py import (  # noqa: F401  (the shared data types and errors)
    SYSTEM_FLAGS, MailboxExists, MailboxInfo, MessageRecord, NoSuchMailbox, Records, Reservation,
    TooManyKeywords, flag_names, ranges_from_values,
)

if os.environ.get("MAILHOUSE_PURE_PYTHON"):
    from store._index_py import Index, View, parse_sequence_set
else:
    try:
        from store._index import Index, View, parse_sequence_set
    except ImportError:
        if os.environ.get("MAILHOUSE_REQUIRE_EXT"):
            raise
        from store._index_py import Index, View, parse_sequence_set

IMPL = Index.__module__

__all__ = [
    "IMPL", "Index", "View", "parse_sequence_set", "SYSTEM_FLAGS", "MailboxExists", "MailboxInfo",
    "MessageRecord", "NoSuchMailbox", "Records", "Reservation", "TooManyKeywords", "flag_names",
    "ranges_from_values",
]
