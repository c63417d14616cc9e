"""mailctl user: accounts in the user database (store/users.py).

    user add NAME [--password-stdin | --password PW] [--quota SIZE] [--protocols imap,pop]
                  [--forward ADDR,...] [--keep-copy] [--disabled] [--full-name TEXT]
    user set NAME [the same options] [--enable] [--no-keep-copy]
    user del NAME [--purge]      user list [--json]      user passwd NAME

--quota takes a size (`500M`, `2G`, `0` = unlimited) or `default` (follow default_quota).
--protocols and --forward take comma lists; an empty value (`--forward ""`) clears them.
--password-stdin reads the first line of stdin; `passwd` asks twice on a terminal, else
reads one line of stdin. Changes take effect for the next login or delivery; running
sessions keep what they had.
Diagnostics: exit 1 with one line for an unknown or existing user, a bad name or address,
an empty password; exit 2 for usage errors.
"""
from __future__ import annotations

import argparse
import getpass
import json
import re
import sys

from master.ctl import Refused
from master.params import parse_size
from store.fsio import StorageError
from store.handle import Store
from store.users import PROTOCOLS, User, UserDB, UserError

ADDRESS = re.compile(r"[^\s@,]+(@[^\s@,]+\.[^\s@,]+)?")
UNCHANGED = object()          # --quota not given (None means "follow default_quota")


def _quota(text: str) -> int | None:
    if text.strip().lower() == "default":
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _protocols(text: str) -> list[str]:
    items = [p.lower() for p in _comma_list(text) if p.lower() != "none"]
    unknown = [p for p in items if p not in PROTOCOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown protocol {unknown[0]!r} (use {', '.join(PROTOCOLS)})")
    return sorted(set(items), key=PROTOCOLS.index)


def _account_options(parser: argparse.ArgumentParser) -> None:
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    secret.add_argument("--password", metavar="PW", help="the password (visible to ps; prefer --password-stdin)")
    parser.add_argument("--quota", type=_quota, default=UNCHANGED, metavar="SIZE", help="e.g. 500M, 2G; 0 = unlimited; default")
    parser.add_argument("--protocols", type=_protocols, metavar="imap,pop", help="mail access allowed")
    parser.add_argument("--forward", type=_comma_list, metavar="ADDR,...", help="forward mail to these")
    parser.add_argument("--keep-copy", action=argparse.BooleanOptionalAction, default=None,
                        help="with --forward: keep a copy in the own mailbox too")
    parser.add_argument("--full-name", metavar="TEXT")


def register(sub) -> None:
    user = sub.add_parser("user", help="add, change, delete and list users")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add a user")
    add.add_argument("name")
    _account_options(add)
    add.add_argument("--disabled", action="store_true", help="create the account disabled")
    add.set_defaults(handler=cmd_add)

    change = actions.add_parser("set", help="change a user")
    change.add_argument("name")
    _account_options(change)
    state = change.add_mutually_exclusive_group()
    state.add_argument("--disabled", action="store_true", help="disable the account")
    state.add_argument("--enable", action="store_true", help="enable the account")
    change.set_defaults(handler=cmd_set)

    delete = actions.add_parser("del", help="delete a user")
    delete.add_argument("name")
    delete.add_argument("--purge", action="store_true", help="also remove the user's mail")
    delete.set_defaults(handler=cmd_del)

    listing = actions.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    passwd = actions.add_parser("passwd", help="set a user's password (read from stdin or the terminal)")
    passwd.add_argument("name")
    passwd.set_defaults(handler=cmd_passwd)


# ---------------------------------------------------------------- helpers

def _read_stdin_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise Refused("empty password on stdin")
    return password


def _password(args) -> str | None:
    if args.password_stdin:
        return _read_stdin_password()
    if args.password is not None:
        if not args.password:
            raise Refused("empty password")
        return args.password
    return None


def _apply(user: User, args) -> None:
    for address in args.forward or []:
        if not ADDRESS.fullmatch(address):
            raise Refused(f"bad forward address {address!r}")
    if args.quota is not UNCHANGED:
        user.quota = args.quota
    if args.protocols is not None:
        user.protocols = args.protocols
    if args.forward is not None:
        user.forward = args.forward
    if args.keep_copy is not None:
        user.keep_copy = args.keep_copy
    if args.full_name is not None:
        user.full_name = args.full_name.strip()
    if args.disabled:
        user.enabled = False
    if getattr(args, "enable", False):
        user.enabled = True


def _with_store(action):
    """Run action(args, store) on this command's store; its one-line errors are mailctl's exit 1."""
    def run(args, config):
        try:
            with Store.open(config.params) as store:
                return action(args, store)
        except (UserError, StorageError) as e:
            raise Refused(str(e)) from None
    return run


def _existing(users: UserDB, name: str) -> User:
    user = users.get(name)
    if user is None:
        raise Refused(f"no such user: {name}")
    return user


def describe(user: User, users: UserDB) -> dict:
    return {"name": user.name, "enabled": user.enabled, "quota": user.quota, "protocols": user.protocols,
            "forward": user.forward, "keep_copy": user.keep_copy, "full_name": user.full_name,
            "password_forms": users.password_forms(user.name)}


# ---------------------------------------------------------------- commands

@_with_store
def cmd_add(args, store) -> int:
    users = store.users
    user = User(args.name)
    _apply(user, args)
    users.add(user, _password(args))
    print(f"added user {user.name}")
    return 0


@_with_store
def cmd_set(args, store) -> int:
    users = store.users
    user = _existing(users, args.name)
    password = _password(args)
    _apply(user, args)
    users.update(user)
    if password is not None:
        users.set_password(user.name, password)
    print(f"changed user {user.name}")
    return 0


@_with_store
def cmd_del(args, store) -> int:
    users = store.users
    user = _existing(users, args.name)
    if args.purge:
        store.mail.remove_user(user.name)
    users.delete(user.name)
    print(f"deleted user {user.name}" + (" and the mail" if args.purge else " (the mail is kept)"))
    return 0


@_with_store
def cmd_list(args, store) -> int:
    users = store.users
    rows = [describe(user, users) for user in sorted(users.list(), key=lambda u: u.name)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        quota = "default" if row["quota"] is None else ("unlimited" if row["quota"] == 0 else str(row["quota"]))
        forward = ",".join(row["forward"]) + (" (+copy)" if row["keep_copy"] and row["forward"] else "")
        print(f"{row['name']:<20} {'enabled' if row['enabled'] else 'disabled':<8} quota={quota:<10} "
              f"protocols={','.join(row['protocols']) or 'none':<8} forward={forward or '-'}"
              + (f"  \"{row['full_name']}\"" if row["full_name"] else ""))
    return 0


@_with_store
def cmd_passwd(args, store) -> int:
    users = store.users
    user = _existing(users, args.name)
    if sys.stdin.isatty():
        password = getpass.getpass(f"New password for {user.name}: ")
        if password != getpass.getpass("Again: "):
            raise Refused("the passwords differ; nothing changed")
        if not password:
            raise Refused("empty password")
    else:
        password = _read_stdin_password()
    users.set_password(user.name, password)
    print(f"changed the password of {user.name}")
    return 0
