"""imapd with real IMAP clients: mbsync (isync), curl (imap://), mutt (batch mode) and the
imapclient library.

mbsync keeps a local Maildir tree and the server's folders (INBOX, a nested folder, the
special-use folders) in step both ways: new mail, local additions (APPEND), flag changes,
deletions; a sync with nothing to do writes nothing on either side. curl fetches a message
by UID with its exact octets, lists the folders and upgrades with STARTTLS. mutt in batch
mode (sending, no terminal) stores its Fcc copy in the server's Sent folder. imapclient parses
ENVELOPE and BODYSTRUCTURE of shared-corpus messages and hears a delivery while in IDLE.

mbsync, curl and mutt are installed by .ci/run (apt-get install -y isync curl mutt),
imapclient by the test extras of pyproject.toml: a missing client is a failure, not a skip.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from imapclient import IMAPClient

from store.mailstore import INBOX
from tests.conftest import CORPUS, shared_corpus
from tests.integration.imapd_support import ImapSystem, client_tls

pytestmark = pytest.mark.integration
PASSWORD = "Client pass 7"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-clients"))
    yield running
    running.stop()


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (see .ci/run)"
    return path


def run(name: str, *args: str, **options) -> subprocess.CompletedProcess:
    """The client `name` run to its end (its exit code is the test's to judge)."""
    return subprocess.run([tool(name), *args], check=False, capture_output=True, timeout=120, **options)


def crlf(data: bytes) -> bytes:
    """A corpus file (LF line ends) as IMAP sends it."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def connect(system, user: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=system.port(), ssl=False, timeout=30)
    client.login(user, PASSWORD)
    return client


def server_state(system, user: str) -> dict[str, tuple[int, dict[int, set[bytes]]]]:
    """Every folder of the user: (UIDVALIDITY, {uid: flags}), read with EXAMINE."""
    client = connect(system, user)
    try:
        state = {}
        for _flags, _delim, name in client.list_folders():
            selected = client.select_folder(name, readonly=True)
            flags = client.fetch(client.search(["ALL"]), ["FLAGS"]) if selected[b"EXISTS"] else {}
            state[name] = (selected[b"UIDVALIDITY"], {uid: set(item[b"FLAGS"]) for uid, item in flags.items()})
        return state
    finally:
        client.logout()


def without_tuid(data: bytes) -> bytes:
    """mbsync tags each message it copies with an X-TUID header (its crash-safe way of finding
    it again): the rest is the message as it was."""
    return re.sub(rb"(?m)^X-TUID: \S+\r?\n", b"", data, count=1)


def server_message(system, user: str, folder: str, uid: int) -> bytes:
    client = connect(system, user)
    try:
        client.select_folder(folder, readonly=True)
        return client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    finally:
        client.logout()


# ---------------------------------------------------------------- mbsync

class Mbsync:
    """mbsync with a configuration of its own: the server's folders <-> a Maildir tree under
    home/Mail (SubFolders Verbatim: Projects/Alpha is home/Mail/Projects/Alpha)."""

    def __init__(self, home: Path, port: int, user: str):
        self.home, self.maildir = home, home / "Mail"
        self.maildir.mkdir(parents=True)
        self.config = home / "mbsyncrc"
        # isync 1.5 renamed SSLType (all 1.4 knows) to TLSType.
        version = tuple(int(n) for n in re.findall(r"\d+", run("mbsync", "--version", text=True).stdout)[:2])
        tls_type = "TLSType" if version >= (1, 5) else "SSLType"
        self.config.write_text(
            f"IMAPAccount server\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass \"{PASSWORD}\"\n"
            f"{tls_type} None\nAuthMechs LOGIN\n\n"
            "IMAPStore remote\nAccount server\n\n"
            f"MaildirStore local\nPath {self.maildir}/\nInbox {self.maildir}/INBOX\nSubFolders Verbatim\n\n"
            "Channel everything\nFar :remote:\nNear :local:\nPatterns *\n"
            "Create Both\nRemove Both\nExpunge Both\nSyncState *\n")

    def run(self) -> str:
        """One full two-way sync; returns the IMAP commands mbsync sent (its -Dn trace)."""
        result = run("mbsync", "-c", str(self.config), "-Dn", "everything",
                     env={**os.environ, "HOME": str(self.home)}, text=True)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return "\n".join(line for line in result.stdout.splitlines() if line.startswith(">>> "))

    def messages(self, folder: str) -> dict[Path, str]:
        """The Maildir's messages of folder: path -> the flag letters of its name."""
        found = {}
        for sub in ("new", "cur"):
            for path in (self.maildir / folder / sub).iterdir():
                found[path] = path.name.rpartition(":2,")[2]
        return found

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every message file (not mbsync's state files): relative path -> (size, mtime_ns)."""
        return {str(p.relative_to(self.maildir)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.maildir.rglob("*") if p.is_file() and p.parent.name in ("new", "cur", "tmp")}


def test_mbsync_two_way_sync(system, tmp_path):
    user = "mbsyncer"
    system.add_user(user, PASSWORD)
    client = connect(system, user)          # the first login makes INBOX and the special-use folders
    client.create_folder("Projects/Alpha")
    client.logout()
    system.deliver(user, "01-plain.eml", "04-alternative.eml")
    system.deliver(user, "06-nested-multipart.eml", mailbox="Projects/Alpha")
    system.deliver(user, "11-vacation-reply.eml", mailbox="Sent")
    sync = Mbsync(tmp_path, system.port(), user)

    # 1. The server's tree arrives: every folder, every message with its octets.
    sync.run()
    for folder in ("INBOX", "Projects", "Projects/Alpha", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (sync.maildir / folder / "cur").is_dir(), folder
    local = {folder: sorted(without_tuid(p.read_bytes()) for p in sync.messages(folder))
             for folder in ("INBOX", "Projects/Alpha", "Sent")}
    assert local == {
        "INBOX": sorted((CORPUS / n).read_bytes() for n in ("01-plain.eml", "04-alternative.eml")),
        "Projects/Alpha": [(CORPUS / "06-nested-multipart.eml").read_bytes()],
        "Sent": [(CORPUS / "11-vacation-reply.eml").read_bytes()],
    }
    assert not sync.messages("Drafts") and not sync.messages("Trash")

    # 2. Local changes: a new message in Drafts, a new folder with a message, a flag set.
    draft = (CORPUS / "02-utf8-8bit.eml").read_bytes()
    (sync.maildir / "Drafts" / "cur" / "1700000000.draft1.localhost:2,DS").write_bytes(draft)
    for sub in ("cur", "new", "tmp"):
        (sync.maildir / "Projects" / "Beta" / sub).mkdir(parents=True)
    (sync.maildir / "Projects" / "Beta" / "new" / "1700000001.beta1.localhost").write_bytes(
        (CORPUS / "12-long-lines.eml").read_bytes())
    plain = next(p for p in sync.messages("INBOX") if b"Minutes of Friday" in p.read_bytes())
    plain.rename(plain.with_name(plain.name.rpartition(":2,")[0] + ":2,F"))
    # ... and a server-side change: \Seen on the other INBOX message.
    client = connect(system, user)
    client.select_folder(INBOX)
    uids = client.search(["ALL"])
    alternative_uid = next(uid for uid, item in client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items()
                           if b"Minutes" not in item[b"BODY[HEADER.FIELDS (SUBJECT)]"])
    client.add_flags([alternative_uid], [b"\\Seen"])
    client.logout()

    trace = sync.run()
    assert trace.count(" APPEND ") == 2, trace
    state = server_state(system, user)
    (draft_uid, draft_flags), = state["Drafts"][1].items()
    assert draft_flags == {b"\\Draft", b"\\Seen"}
    assert without_tuid(server_message(system, user, "Drafts", draft_uid)) == crlf(draft)
    (beta_uid, _), = state["Projects/Beta"][1].items()
    beta = server_message(system, user, "Projects/Beta", beta_uid)
    assert without_tuid(beta) == crlf((CORPUS / "12-long-lines.eml").read_bytes())
    assert {uid: b"\\Flagged" in flags for uid, flags in state[INBOX][1].items()} == {
        uid: uid != alternative_uid for uid in uids}
    seen_locally = [flags for path, flags in sync.messages("INBOX").items() if b"Minutes" not in path.read_bytes()]
    assert seen_locally == ["S"]

    # 3. Nothing left to do: nothing is sent but reading, no file changes, the server's UIDs stay.
    before_files, before_state = sync.snapshot(), server_state(system, user)
    trace = sync.run()
    for verb in (" APPEND ", " STORE ", " EXPUNGE", " CREATE ", " DELETE ", "BODY.PEEK[]"):
        assert verb not in trace, trace
    assert sync.snapshot() == before_files
    assert server_state(system, user) == before_state

    # 4. Deletions both ways: a file removed locally, a message expunged on the server.
    (beta_file,) = sync.messages("Projects/Beta")
    beta_file.unlink()
    client = connect(system, user)
    client.select_folder("Projects/Alpha")
    client.delete_messages(client.search(["ALL"]))
    client.expunge()
    client.logout()
    trace = sync.run()
    assert "UID STORE 1 +FLAGS.SILENT (\\Deleted)" in trace, trace      # mbsync expunges by CLOSE
    state = server_state(system, user)
    assert state["Projects/Beta"][1] == {} and state["Projects/Alpha"][1] == {}
    assert not sync.messages("Projects/Alpha")
    assert state[INBOX] == before_state[INBOX]      # the rest untouched


# ---------------------------------------------------------------- curl

def curl(url: str, user: str, *options: str) -> subprocess.CompletedProcess:
    return run("curl", "-s", "-S", "--max-time", "20", "-u", f"{user}:{PASSWORD}", *options, url)


def test_curl_fetch_list_and_starttls(system):
    user = "curler"
    system.add_user(user, PASSWORD)
    client = connect(system, user)
    client.create_folder("Lists/Announce")
    client.logout()
    names = ["08-dot-lines.eml", "05-mixed-attachment.eml", "09-folded-headers.eml"]
    uids = system.deliver(user, *names)
    base = f"imap://127.0.0.1:{system.port()}/"

    for name, uid in zip(names, uids):
        fetched = curl(f"{base}INBOX;UID={uid}", user)
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout == (CORPUS / name).read_bytes(), name
    section = curl(f"{base}INBOX;UID={uids[1]};SECTION=HEADER.FIELDS%20(SUBJECT)", user)
    assert section.returncode == 0 and section.stdout.startswith(b"Subject: "), section

    listing = curl(base, user)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.decode().splitlines()
    assert all(line.startswith("* LIST (") for line in lines), lines
    assert {line.rsplit(" ", 1)[1].strip('"') for line in lines} == {
        "INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash", "Lists", "Lists/Announce"}
    assert any("\\Sent" in line and line.endswith('"Sent"') for line in lines)

    examine = curl(base, user, "-X", "EXAMINE INBOX")
    assert examine.returncode == 0 and b"* 3 EXISTS" in examine.stdout, examine
    missing = curl(f"{base}INBOX;UID={uids[-1] + 100}", user)
    assert missing.returncode != 0 and not missing.stdout
    wrong = run("curl", "-s", "-u", f"{user}:wrong", base)
    assert wrong.returncode == 67                       # CURLE_LOGIN_DENIED

    for port in (system.port(), system.port("strict")):   # STARTTLS, offered or required
        secured = curl(f"imap://127.0.0.1:{port}/INBOX;UID={uids[0]}", user, "--ssl-reqd", "-k")
        assert secured.returncode == 0, secured.stderr
        assert secured.stdout == (CORPUS / names[0]).read_bytes()
    wrapped = curl(f"imaps://127.0.0.1:{system.port('wrapper')}/INBOX;UID={uids[0]}", user, "-k")
    assert wrapped.returncode == 0 and wrapped.stdout == (CORPUS / names[0]).read_bytes()
    refused = curl(f"imap://127.0.0.1:{system.port('strict')}/INBOX;UID={uids[0]}", user)
    assert refused.returncode != 0 and not refused.stdout          # no login in clear there
    log = system.ms.log("imap")
    assert f"login: user={user} method=" in log and "tls=TLSv1" in log


# ---------------------------------------------------------------- mutt

def test_mutt_batch_send_saves_fcc_on_the_server(system, tmp_path):
    """mutt reads mail only with a terminal; in batch mode (stdin not a terminal) it sends, and
    its Fcc copy goes to the server's Sent folder over IMAP (LOGIN, APPEND)."""
    user = "mutter"
    system.add_user(user, PASSWORD)
    sent_copy = tmp_path / "handed-to-sendmail"
    (tmp_path / "sendmail").write_text(f"#!/bin/sh\ncat > {sent_copy}\n")
    (tmp_path / "sendmail").chmod(0o755)
    folder = f"imap://{user}@127.0.0.1:{system.port()}/"
    (tmp_path / "muttrc").write_text(
        f'set folder="{folder}"\nset imap_pass="{PASSWORD}"\nset ssl_starttls=no\nset ssl_force_tls=no\n'
        f'set record="=Sent"\nset copy=yes\nset sendmail="{tmp_path / "sendmail"}"\n'
        'set from="Mutt User <mutter@example.test>"\nset use_from=yes\nset header_cache=""\n'
        'set message_cachedir=""\nset imap_check_subscribed=no\n')
    body = (CORPUS / "12-long-lines.eml").read_bytes().split(b"\n\n", 1)[1]
    result = run("mutt", "-n", "-F", str(tmp_path / "muttrc"), "-s", "Quarterly table", "bob@example.test",
                 input=body, env={**os.environ, "HOME": str(tmp_path), "TERM": "dumb"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent_copy.read_bytes().count(b"Subject: Quarterly table") == 1

    client = connect(system, user)
    client.select_folder("Sent", readonly=True)
    (uid,) = client.search(["ALL"])
    stored = client.fetch([uid], ["BODY.PEEK[]", "FLAGS"])[uid]
    client.logout()
    assert b"\\Seen" in stored[b"FLAGS"]
    assert b"Subject: Quarterly table\r\n" in stored[b"BODY[]"]
    assert stored[b"BODY[]"].split(b"\r\n\r\n", 1)[1] == crlf(body)
    assert f"login: user={user} method=" in system.ms.log("imap")


# ---------------------------------------------------------------- imapclient

def pick_shared(count_per_feature: int = 1) -> list[Path]:
    """A handful of well-formed shared-corpus messages covering the MIME shapes."""
    wanted = ["multipart-mixed", "multipart-alternative", "rfc822-nested", "rfc2047", "8bit", "dsn", "rfc2231"]
    picked: list[Path] = []
    for feature in wanted:
        matching = [p for p, f in shared_corpus() if feature in f and "malformed" not in f and p not in picked]
        picked += matching[:count_per_feature]
    return picked


def leaf_types(structure) -> list[str]:
    """The content types of a BODYSTRUCTURE's leaves, depth first, as "type/subtype"."""
    if structure.is_multipart:
        return [t for part in structure[0] for t in leaf_types(part)]
    return [f"{structure[0].decode()}/{structure[1].decode()}".lower()]


def email_leaf_types(message) -> list[str]:
    if message.get_content_maintype() == "multipart":
        return [t for part in message.get_payload() for t in email_leaf_types(part)]
    return [message.get_content_type()]


def test_imapclient_envelope_and_bodystructure_of_shared_corpus(system):
    user = "parsed"
    system.add_user(user, PASSWORD)
    paths = pick_shared()
    assert len(paths) >= 5
    store = system.store()
    try:
        uids = [store.deliver(user, INBOX, path.read_bytes()) for path in paths]
    finally:
        store.index.close()
    client = connect(system, user)
    try:
        client.select_folder(INBOX, readonly=True)
        fetched = client.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE"])
    finally:
        client.logout()
    for path, uid in zip(paths, uids):
        data = path.read_bytes()
        parsed = email.message_from_bytes(data, policy=email.policy.compat32)
        item = fetched[uid]
        assert item[b"RFC822.SIZE"] == len(data), path
        envelope = item[b"ENVELOPE"]
        subject = parsed["Subject"]
        if subject is not None and subject.isascii():     # the raw header value, unfolded
            assert envelope.subject.decode() == re.sub(r"\r?\n", "", subject).strip(), path
        assert envelope.message_id == (parsed["Message-ID"].strip().encode() if parsed["Message-ID"] else None)
        sender = email.utils.parseaddr(parsed["From"] or "")[1]
        if sender:
            first = envelope.from_[0]
            assert f"{first.mailbox.decode()}@{first.host.decode()}".lower() == sender.lower(), path
        structure = item[b"BODYSTRUCTURE"]
        assert structure.is_multipart == (parsed.get_content_maintype() == "multipart"), path
        assert leaf_types(structure) == email_leaf_types(parsed), path


def test_imapclient_idle_hears_a_delivery(system):
    user = "idler"
    system.add_user(user, PASSWORD)
    system.deliver(user, "01-plain.eml")
    client = connect(system, user)
    try:
        client.select_folder(INBOX)
        client.idle()
        system.deliver(user, "03-quoted-printable.eml")
        heard = []
        while (2, b"EXISTS") not in heard:
            responses = client.idle_check(timeout=30)
            assert responses, "no update within 30 s of the delivery"
            heard += responses
        client.idle_done()
        assert client.search(["ALL"]) == [1, 2]
        assert client.fetch([2], ["RFC822.SIZE"])[2][b"RFC822.SIZE"] == len(
            (CORPUS / "03-quoted-printable.eml").read_bytes())
    finally:
        client.logout()


def test_imapclient_over_tls(system):
    user = "tlsclient"
    system.add_user(user, PASSWORD)
    system.deliver(user, "07-forwarded-rfc822.eml")
    client = IMAPClient("127.0.0.1", port=system.port("wrapper"), ssl=True, ssl_context=client_tls(), timeout=30)
    try:
        client.login(user, PASSWORD)
        client.select_folder(INBOX, readonly=True)
        structure = client.fetch([1], ["BODYSTRUCTURE"])[1][b"BODYSTRUCTURE"]
        assert leaf_types(structure) == ["text/plain", "message/rfc822"]
    finally:
        client.logout()
    starttls = IMAPClient("127.0.0.1", port=system.port("strict"), ssl=False, timeout=30)
    try:
        starttls.starttls(client_tls())
        starttls.login(user, PASSWORD)
        assert starttls.select_folder(INBOX, readonly=True)[b"EXISTS"] == 1
    finally:
        starttls.logout()
