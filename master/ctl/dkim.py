"""mailctl dkim: the DKIM keys smtpd signs our users' mail with (workers/smtpd/dkim.py).

    mailctl dkim keygen DOMAIN [--selector S] [--type rsa|ed25519] [--bits N]
        a new private key $dkim_key_directory/DOMAIN.SELECTOR.key (default selector `mail`,
        RSA 2048; --bits 1024..4096 for RSA) and the DNS TXT record to publish for it
    mailctl dkim show [DOMAIN] [--json]
        the keys (all, or DOMAIN's), which one signs, and their DNS records

The key is written durably, mode 0600 in a 0700 folder; as root, both are given to
mail_owner (the workers, which read the key, run as that user). An existing key file is
never replaced (a published record would stop matching): choose another selector, or
remove the file first. The record is printed as a zone-file line, its value split into
strings of at most 255 characters (RFC 1035 character-strings; RFC 6376 3.6.2.2 joins
them): RSA keys publish the DER SubjectPublicKeyInfo (k=rsa), Ed25519 keys the raw 32
octets (k=ed25519, RFC 8463). Running workers see a new key at the next message (no reload).
Diagnostics: a bad domain or selector, an existing file, a missing mail_owner or a write
error is refused with a one-line reason (exit 1); `show` of a domain without a key too.
An unreadable key file is listed with the reason.
"""
from __future__ import annotations

import base64
import json
import os
import pwd
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from master.ctl import Refused
from store.fsio import StorageError, write_durably
from workers.smtpd.dkim import (
    DEFAULT_SELECTOR,
    DOMAIN,
    SELECTOR,
    key_files,
    key_name,
    load_private_key,
    signing_file,
)

RSA_BITS = (1024, 4096)          # RFC 8301: at least 1024 bits; more than 4096 does not fit DNS well
TXT_STRING = 255


def register(sub) -> None:
    dkim = sub.add_parser("dkim", help="DKIM signing keys and their DNS records")
    actions = dkim.add_subparsers(dest="dkim_action", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="create a signing key for a domain")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", default=DEFAULT_SELECTOR, help=f"one DNS label (default: {DEFAULT_SELECTOR})")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type (default: rsa)")
    keygen.add_argument("--bits", type=int, help="RSA key size (default: 2048)")
    keygen.set_defaults(handler=cmd_keygen)
    show = actions.add_parser("show", help="list the keys and their DNS records")
    show.add_argument("domain", metavar="DOMAIN", nargs="?")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)


# ---------------------------------------------------------------- building blocks

def check_domain(domain: str) -> str:
    name = domain.rstrip(".").lower()
    if len(name) > 253 or not DOMAIN.fullmatch(name):
        raise Refused(f"bad domain {domain!r}")
    return name


def check_selector(selector: str) -> str:
    name = selector.lower()
    if not SELECTOR.fullmatch(name):
        raise Refused(f"bad selector {selector!r} (one DNS label: letters, digits, - and _)")
    return name


def new_key(kind: str, bits: int | None):
    if kind == "ed25519":
        if bits is not None:
            raise Refused("--bits is for RSA keys; Ed25519 keys have one size")
        return ed25519.Ed25519PrivateKey.generate()
    bits = 2048 if bits is None else bits
    if not RSA_BITS[0] <= bits <= RSA_BITS[1]:
        raise Refused(f"--bits {bits}: RSA keys must have {RSA_BITS[0]} to {RSA_BITS[1]} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def record_value(key) -> str:
    """The TXT value: v=DKIM1; k=...; p=... for a private key's public half."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        kind, data = "ed25519", public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        kind, data = "rsa", public.public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode()}"


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}."


def zone_line(domain: str, selector: str, value: str) -> str:
    strings = " ".join(f'"{value[i:i + TXT_STRING]}"' for i in range(0, len(value), TXT_STRING))
    return f"{record_name(domain, selector)} IN TXT {strings}"


def key_type(key) -> str:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else f"rsa {key.key_size}"


def _mail_owner(params) -> pwd.struct_passwd | None:
    """As root: the user the workers run as (they read the key); else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(params.mail_owner)
    except KeyError:
        raise Refused(f"mail_owner {params.mail_owner!r} is not a user on this system") from None


def write_key(params, name: str, pem: bytes) -> str:
    directory = params.dkim_key_directory
    owner = _mail_owner(params)
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        raise Refused(f"{path} exists (its record may be published): choose another --selector or remove it first")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
        write_durably(directory, name, pem, mode=0o600)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    except OSError as e:
        raise Refused(f"cannot write {path}: {e.strerror}") from None
    except StorageError as e:
        raise Refused(str(e)) from None
    return path


def list_keys(params, domain: str | None = None) -> list[dict]:
    """One row per key file (of domain, or all), signing key of each domain marked."""
    directory = params.dkim_key_directory
    try:
        files = key_files(directory)
    except FileNotFoundError:
        files = {}
    except OSError as e:
        raise Refused(f"cannot list {directory}: {e.strerror}") from None
    rows = []
    for name in sorted(files) if domain is None else [domain]:
        chosen = signing_file(files.get(name, []))
        for selector, path in files.get(name, []):
            row = {"domain": name, "selector": selector, "file": path,
                   "signing": chosen is not None and chosen[2] == path,
                   "record_name": record_name(name, selector)}
            try:
                key = load_private_key(path)
            except (OSError, ValueError) as e:
                row.update(type=None, record=None, error=getattr(e, "strerror", None) or str(e))
            else:
                row.update(type=key_type(key), record=record_value(key), error=None)
            rows.append(row)
    return rows


# ---------------------------------------------------------------- commands

def cmd_keygen(args, config) -> int:
    params = config.params
    domain, selector = check_domain(args.domain), check_selector(args.selector)
    key = new_key(args.type, args.bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = write_key(params, key_name(domain, selector), pem)
    print(f"wrote {path} ({key_type(key)}); publish this DNS record:")
    print(zone_line(domain, selector, record_value(key)))
    return 0


def cmd_show(args, config) -> int:
    domain = check_domain(args.domain) if args.domain else None
    rows = list_keys(config.params, domain)
    if domain is not None and not rows:
        raise Refused(f"no DKIM key for {domain} (mailctl dkim keygen {domain})")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if rows and not config.params.dkim_signing:
        print("note: dkim_signing = no in main.cf: smtpd signs nothing", file=sys.stderr)
    for row in rows:
        if row["error"]:
            print(f"{row['domain']} {row['selector']}: {row['file']}: cannot read: {row['error']}")
            continue
        state = "signing" if row["signing"] else "not signing (an older key of the domain signs)"
        print(f"{row['domain']} {row['selector']} {row['type']}, {state}: {row['file']}")
        print(f"    {zone_line(row['domain'], row['selector'], row['record'])}")
    return 0
