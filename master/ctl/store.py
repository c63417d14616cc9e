"""mailctl accounts / reconstruct: quota usage and index repair.

    mailctl accounts [--json]       user, quota_bytes, used_bytes, percent_free
    mailctl reconstruct [USER ...]  rebuild index entries from the message files

accounts lists the accounts that have used the store (they have mailboxes in the index);
quota_bytes is the user's quota or default_quota, 0 meaning unlimited (percent_free is
then empty: null in JSON). reconstruct runs while the server runs (store/reconstruct.py)
and prints one line per repair and a summary line per user. A damaged index (cut short or
foreign) is rebuilt for every user, whatever USERs were named: it is kept as
data.mdb.damaged.<time> and a new one is put in its place (replace_damaged_index).
Diagnostics: a bad user name, one that is neither on disk nor in the index, a missing mail
store directory, a damaged index (accounts) and an index that cannot be written are
refused (exit 1, one line).
"""
from __future__ import annotations

import json
import os

from master.ctl import Refused
from store.fsio import StorageError
from store.handle import Store
from store.lmdbcheck import DamagedEnvironment
from store.mailstore import MailStore
from store.reconstruct import reconstruct, replace_damaged_index
from store.users import UserError, check_name


def register(sub) -> None:
    accounts = sub.add_parser("accounts", help="quota and usage per account")
    accounts.add_argument("--json", action="store_true", help="print JSON")
    accounts.set_defaults(handler=cmd_accounts)
    reconstruct = sub.add_parser("reconstruct", help="rebuild the index from the message files")
    reconstruct.add_argument("users", nargs="*", metavar="USER", help="only these users (default: all)")
    reconstruct.set_defaults(handler=cmd_reconstruct)


def account_rows(store: Store) -> list[dict]:
    rows = []
    for name in store.mail.index.users():
        quota, used = store.directory.quota(name), store.mail.usage(name)
        free = round(max(quota - used, 0) * 100 / quota, 1) if quota else None
        rows.append({"user": name, "quota_bytes": quota, "used_bytes": used, "percent_free": free})
    return rows


def cmd_accounts(args, config) -> int:
    with Store.open(config.params) as store:
        try:
            rows = account_rows(store)
        except StorageError as e:
            raise Refused(str(e)) from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'USER':<24} {'QUOTA':>14} {'USED':>14} {'FREE':>7}")
    for row in rows:
        quota = str(row["quota_bytes"]) if row["quota_bytes"] else "unlimited"
        free = "-" if row["percent_free"] is None else f"{row['percent_free']:.1f}%"
        print(f"{row['user']:<24} {quota:>14} {row['used_bytes']:>14} {free:>7}")
    return 0


def cmd_reconstruct(args, config) -> int:
    try:
        names = [check_name(name) for name in args.users]
    except UserError as e:
        raise Refused(str(e)) from None
    with Store.open(config.params) as store:
        mail = store.mail
        try:
            for name in names:
                if not _has_mail_store(mail, name):
                    raise Refused(f"no mail store for user {name!r}")
            replaced = replace_damaged_index(mail)
            if replaced is not None:
                lines = replaced.lines()
                if names:
                    lines.append("index: it is shared by all users, so all of them were rebuilt")
            else:
                reports = [r for name in names for r in reconstruct(mail, name)] if names else reconstruct(mail)
                lines = [line for report in reports for line in report.lines()]
        except StorageError as e:
            raise Refused(str(e)) from None
    for line in lines:
        print(line)
    return 0


def _has_mail_store(store: MailStore, name: str) -> bool:
    """On disk, or in the index (when it can be read: a damaged one is rebuilt from the disk)."""
    if os.path.isdir(store.user_dir(name)):
        return True
    try:
        return name in store.index.users()
    except DamagedEnvironment:
        return False
