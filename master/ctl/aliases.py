"""mailctl aliases build: compile the aliases file into its LMDB map (store/aliases.py).

    aliases build [--file F]      (= newaliases; `postalias F` = aliases build --file F)

Without --file it compiles alias_maps (main.cf) into `<alias_maps>.lmdb`, the map the
system reads; with --file F into `F.lmdb` beside F, as Postfix's postalias does. Running
workers see the new map at their next lookup (the file is replaced atomically).
Diagnostics: exit 1 with `file:line: reason` for an error in the file; the previous map is
kept. Warnings (a duplicate name) go to stderr and the build succeeds.
"""
from __future__ import annotations

import sys

from master.ctl import Refused
from store.aliases import AliasError, build
from store.fsio import StorageError


def register(sub) -> None:
    aliases = sub.add_parser("aliases", help="compile the aliases file (newaliases)")
    actions = aliases.add_subparsers(dest="action", required=True, metavar="ACTION")
    compile_ = actions.add_parser("build", help="compile alias_maps (or --file F) into its .lmdb map")
    compile_.add_argument("--file", metavar="F", help="the aliases file to compile (default: alias_maps)")
    compile_.set_defaults(handler=cmd_build)


def cmd_build(args, config) -> int:
    source = args.file or config.params.alias_maps
    try:
        report = build(source)
    except (AliasError, StorageError) as e:
        raise Refused(f"{e} (the previous alias map is kept)") from None
    for warning in report.warnings:
        print(f"mailctl: warning: {warning}", file=sys.stderr)
    print(f"{report.target}: {report.count} aliases")
    return 0
