"""mailctl init: prepare the data directories of a configuration (used by `make run`).

    mailctl init [--demo] [--postmaster NAME]

Creates what is missing and keeps what is there (running it again changes nothing):
the queue (with its layout), store, index, log, run and tls directories (no folder outside
data_directory but those main.cf names), a self-signed certificate for myhostname, the
role addresses (postmaster: an account of that name or --postmaster NAME; abuse: an alias
of postmaster) and with --demo the user `demo` (password `demo`). Then it
prints how to start the master and connect to each inet service of master.cf.
When run as root, what the workers use (master/preflight.py worker_paths), the user
database and the TLS key are given to mail_owner, since workers drop to that user after the
master has bound the ports; run_directory stays root's (master/rundir.py). The password
database and its key go to mail_owner too when its processes verify passwords (no auth
service in master.cf, or one run unpriv); else they are made root's, 0700/0600: only the
auth service, running as root, reads them.
Diagnostics: a directory or file that cannot be created is refused with its path (exit 1);
a bad master.cf is refused with file:line.
"""
from __future__ import annotations

import os
import pwd

from master.cf import ServiceSpec, parse_master_cf
from master.ctl import Refused
from master import preflight, rundir
from master.ctl.tls import ensure_certificate, fingerprint
from master.params import Params
from store.aliases import AliasError, build, map_path, parse
from store.fsio import StorageError
from store.handle import Store
from store.users import UserDB, UserError

POSTMASTER = "postmaster"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"

# (command, TLS from the first byte) -> what the service is to a client
_KINDS = {
    ("smtpd", False): "SMTP", ("smtpd", True): "SMTPS",
    ("imapd", False): "IMAP", ("imapd", True): "IMAPS",
    ("pop3d", False): "POP3", ("pop3d", True): "POP3S",
}


def register(sub) -> None:
    init = sub.add_parser("init", help="create the data directories, a certificate and (--demo) a demo user")
    init.add_argument("--demo", action="store_true", help=f"add the user {DEMO_USER!r} (password {DEMO_PASSWORD!r})")
    init.add_argument("--postmaster", metavar="NAME",
                      help=f"where postmaster@ mail goes (default: an account {POSTMASTER!r})")
    init.set_defaults(handler=cmd_init)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def _tls_folders(params: Params) -> list[str]:
    """The certificate's and key's folders that are ours to make: those inside data_directory
    (a key kept elsewhere, say under /etc/ssl, is the administrator's and is left alone)."""
    folders = {os.path.dirname(params.tls_cert_file), os.path.dirname(params.tls_key_file)}
    return sorted(f for f in folders if _inside(f, params.data_directory))


def data_directories(params: Params) -> list[str]:
    """The folders init makes: those main.cf names as *_directory, and the TLS folders inside
    data_directory; nothing else outside data_directory."""
    return [params.queue_directory, params.mail_store_directory, params.index_directory,
            params.log_directory, params.run_directory, *_tls_folders(params)]


def create_directories(params: Params, store: Store) -> None:
    tls_dirs = set(_tls_folders(params))
    for key in ("tls_cert_file", "tls_key_file"):
        folder = os.path.dirname(getattr(params, key))
        if folder not in tls_dirs and not os.path.isdir(folder):
            raise Refused(f"{key}: the folder {folder} does not exist (init makes no folder outside "
                          f"data_directory but the *_directory ones)")
    for path in data_directories(params):
        try:
            os.makedirs(path, mode=0o700 if path in tls_dirs else 0o750, exist_ok=True)
        except OSError as e:
            raise Refused(f"cannot create {path}: {e.strerror}") from None
    try:
        store.queue.ensure_layout()
        rundir.prepare(params)
    except OSError as e:
        raise Refused(f"cannot prepare {e.filename or params.queue_directory}: {e.strerror or e}") from None


def give_to_mail_owner(params: Params, store: Store, specs: list[ServiceSpec]) -> None:
    """As root: what the workers use (preflight.worker_paths) and the key belong to mail_owner.
    run_directory stays root's: it holds the master's pid file and status socket; so does
    the password database when the auth service runs as root."""
    try:
        owner = pwd.getpwnam(params.mail_owner)
    except KeyError:
        raise Refused(f"mail_owner {params.mail_owner!r} is not a user on this system") from None
    store.users.create_password_files()
    verify = preflight.workers_verify(specs)
    if not verify:
        _keep_for_root(preflight.password_paths(params))
    ours = [params.data_directory, *data_directories(params)]
    paths = [need.path for need in preflight.worker_paths(params, verify)
             if any(_inside(need.path, folder) for folder in ours)
             and params.run_directory not in (need.path, os.path.dirname(need.path))]
    paths += _tls_folders(params)
    if _inside(params.tls_key_file, params.data_directory):
        paths.append(params.tls_key_file)
    for path in paths:
        if not os.path.lexists(path):
            continue                                 # optional (the alias map before newaliases)
        if os.path.islink(path):
            raise Refused(f"{path} is a symbolic link; refusing to give it to {params.mail_owner}")
        try:
            os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
        except OSError as e:
            raise Refused(f"cannot give {path} to {params.mail_owner}: {e.strerror}") from None


def _keep_for_root(paths: list[str]) -> None:
    """The password database and its key: root's alone (0700 folder, 0600 files)."""
    for path in paths:
        if os.path.islink(path):
            raise Refused(f"{path} is a symbolic link; refusing it")
        try:
            os.chown(path, 0, 0, follow_symlinks=False)
            os.chmod(path, 0o700 if os.path.isdir(path) else 0o600)
        except OSError as e:
            raise Refused(f"cannot give {path} to root: {e.strerror}") from None


def ensure_role_addresses(params: Params, users: UserDB, postmaster: str | None) -> list[str]:
    """RFC 2142's postmaster and abuse must reach somebody. Without --postmaster the account
    `postmaster` (no password: it receives, and logs in once given one) takes the mail;
    `abuse` is an alias of postmaster. Lines an aliases file already has are kept. -> what
    was done, one line each."""
    done = []
    if postmaster is None:
        try:
            if users.get(POSTMASTER) is None:
                users.add(POSTMASTER)
                done.append(f"account {POSTMASTER} (no password yet: mailctl user passwd {POSTMASTER})")
        except (UserError, StorageError) as e:
            raise Refused(f"cannot add the {POSTMASTER} account: {e}") from None
    source = params.alias_maps
    try:
        entries, _warnings = parse(source) if os.path.exists(source) else ({}, [])
    except AliasError as e:
        raise Refused(f"{e} (fix the aliases file, then run init again)") from None
    wanted = {"postmaster": postmaster, "abuse": POSTMASTER}
    lines = [f"{name}: {target}\n" for name, target in wanted.items() if target and name not in entries]
    if lines or not os.path.exists(map_path(source)):
        try:
            with open(source, "a", encoding="utf-8") as f:
                f.writelines(lines)
            build(source)
        except (OSError, AliasError, StorageError) as e:
            raise Refused(f"cannot write the aliases in {source}: {getattr(e, 'strerror', None) or e}") from None
        done += [f"alias {line.strip()} in {source}" for line in lines]
    return done


def ensure_demo_user(users: UserDB) -> bool:
    """The demo user, unless it exists; -> True when it was created now."""
    try:
        if users.get(DEMO_USER) is not None:
            return False
        users.add(DEMO_USER, password=DEMO_PASSWORD)
    except (UserError, StorageError) as e:
        raise Refused(f"cannot add the demo user: {e}") from None
    return True


def describe_service(spec: ServiceSpec, params: Params) -> str:
    """One line telling a client what this inet service offers."""
    effective = params.override(spec.overrides, spec.where)
    if spec.command == "smtpd":
        wrapped = effective.smtpd_tls_wrappermode
        level = effective.smtpd_tls_security_level
        needs_auth = "reject" in effective.smtpd_relay_restrictions and \
            "permit_mynetworks" not in effective.smtpd_relay_restrictions
    else:
        wrapped = effective.tls_wrappermode
        level = effective.imap_pop_tls_security_level
        needs_auth = False
    kind = _KINDS.get((spec.command, wrapped), spec.command)
    if spec.command == "smtpd" and needs_auth and not wrapped:
        kind = "submission"
    if wrapped:
        security = "TLS from the first byte"
    else:
        starttls = {"smtpd": "STARTTLS", "imapd": "STARTTLS", "pop3d": "STLS"}.get(spec.command, "STARTTLS")
        security = {"none": "no TLS", "may": f"{starttls} offered", "encrypt": f"{starttls} required"}[level]
    if needs_auth:
        security += ", AUTH required to relay"
    host = spec.host or "*"
    address = f"[{host}]:{spec.port}" if ":" in host else f"{host}:{spec.port}"
    return f"  {kind:<11} {address:<22} {security}"


def cmd_init(args, config) -> int:
    params = config.params
    specs = parse_master_cf(config.master_cf)        # a bad table is refused before anything is made
    with Store.open(params) as store:
        create_directories(params, store)
        cert = ensure_certificate(params)
        created_user = ensure_demo_user(store.users) if args.demo else False
        roles = ensure_role_addresses(params, store.users, args.postmaster)
        if os.geteuid() == 0:
            give_to_mail_owner(params, store, specs)

    print(f"mailhouse data in {params.data_directory}")
    if cert is not None:
        print(f"  certificate {params.tls_cert_file}: new, self-signed for {params.myhostname}")
        print(f"              SHA-256 {fingerprint(cert)}")
    else:
        print(f"  certificate {params.tls_cert_file}: kept")
    for line in roles:
        print(f"  postmaster  {line}")
    if args.demo:
        state = "created" if created_user else "already there"
        print(f"  demo user   {DEMO_USER} / password {DEMO_PASSWORD} ({state}); "
              f"mail to {DEMO_USER}@{params.mydomain} lands in its INBOX")
    print(f"\nStart:  master -c {config.master_cf}")
    services = [spec for spec in specs if spec.kind == "inet"]
    if services:
        print("Connect (the certificate is self-signed: tell the client to accept it):")
        for spec in services:
            print(describe_service(spec, params))
    smtp = next((s for s in services if s.command == "smtpd" and not s.overrides), None)
    if smtp is not None and args.demo:
        host = spec_host(smtp)
        print(f"Try:    swaks --server {host}:{smtp.port} --to {DEMO_USER}@{params.mydomain}")
    pop = next((s for s in services if s.command == "pop3d" and not s.overrides), None)
    if pop is not None and args.demo:
        print(f"        curl -k --ssl-reqd pop3://{spec_host(pop)}:{pop.port}/1 -u {DEMO_USER}:{DEMO_PASSWORD}")
    return 0


def spec_host(spec: ServiceSpec) -> str:
    if not spec.host:
        return "localhost"
    return f"[{spec.host}]" if ":" in spec.host else spec.host
