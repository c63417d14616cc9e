"""mailctl: the administration command, and the shorthands mailq / newaliases / postalias.

Each area lives in its own module with register(subparsers); the chosen subcommand's
handler gets (args, config) and returns the exit code. Exit codes: 0 success, 1 a refused
action (one-line reason on stderr), 2 usage errors (argparse).
Every listing takes --json.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from master.cf import resolve_config_path
from master.params import ConfigError, Params, load_main_cf
from store.fsio import StorageError

# The subcommand modules, each owning one area of administration.
AREAS = ("users", "aliases", "queue", "status", "logs", "store", "tls", "dkim", "dns", "setup",
         "sasl_passwords")


@dataclass
class Config:
    master_cf: str
    main_cf: str
    params: Params


class Refused(Exception):
    """An action the system refuses; the message is printed as one line and mailctl exits 1."""


def load_config(path: str) -> Config:
    master_cf, main_cf = resolve_config_path(path)
    return Config(master_cf, main_cf, load_main_cf(main_cf))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailctl", description="Administer a mailhouse mail system.")
    parser.add_argument("-c", "--config", default="etc", help="master.cf or its folder (default: etc)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        importlib.import_module(f"master.ctl.{area}").register(sub)
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return args.handler(args, config) or 0
    except (Refused, ConfigError, StorageError) as e:     # StorageError: a damaged or full store
        print(f"mailctl: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


def _shorthand(prog: str, words: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("-c", "--config", default="etc")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    sys.exit(run(["-c", args.config, *words, *args.rest]))


def mailq_main() -> None:
    _shorthand("mailq", ["queue", "list"])


def newaliases_main() -> None:
    _shorthand("newaliases", ["aliases", "build"])


def postalias_main() -> None:
    _shorthand("postalias", ["aliases", "build", "--file"])
