"""mailctl sasl-passwords check: check the SMTP AUTH password file of relay hosts.

    sasl-passwords check [--file F] [--json]

Checks smtp_sasl_password_maps (main.cf), or F, as the smtp service will read it
(workers/smtp/passwords.py check_file): its permissions (nobody but its owner and group may
access it; it belongs to root, mail_owner or the user running the check) and every line. Nothing is
built: the smtp service reads the text file itself and sees an edit at its next delivery
(Postfix's postmap step is not needed). Prints `FILE: N entries` and each key with its user
(never a password); --json: [{"key": K, "user": U}, ...].
Diagnostics: exit 1 with `FILE:LINE: reason` for a wrong line, or `FILE: refused: why` for
permissions; warnings (a duplicate key) on stderr, and the check succeeds.
"""
from __future__ import annotations

import json
import pwd
import sys

from master.ctl import Refused
from workers.smtp.passwords import PasswordFileError, check_file


def register(sub) -> None:
    area = sub.add_parser("sasl-passwords", help="check the SMTP AUTH passwords of relay hosts")
    actions = area.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="check smtp_sasl_password_maps (or --file F)")
    check.add_argument("--file", metavar="F", help="the file to check (default: smtp_sasl_password_maps)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_check)


def cmd_check(args, config) -> int:
    path = args.file or config.params.smtp_sasl_password_maps
    if not path:
        raise Refused("smtp_sasl_password_maps is not set (give --file F)")
    try:
        owners = (pwd.getpwnam(config.params.mail_owner).pw_uid,)
    except KeyError:                                   # no such user here (a development checkout)
        owners = ()
    try:
        entries, warnings = check_file(path, owners)
    except PasswordFileError as e:
        raise Refused(str(e)) from None
    for warning in warnings:
        print(f"mailctl: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"key": key, "user": user} for key, (user, _password) in entries.items()]))
        return 0
    print(f"{path}: {len(entries)} entries")
    for key, (user, _password) in entries.items():
        print(f"  {key}  {user}")
    return 0
