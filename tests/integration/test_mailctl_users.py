"""mailctl user / aliases / queue, run as the real command; user changes seen by a running pop3d."""
from __future__ import annotations

import hashlib
import json
import poplib
import time

import pytest

from store.aliases import AliasMap
from store.queue import Envelope, Queue, Recipient
from tests.integration.delivery_support import Inbox, delivery_system, parse, sendmail, wait_queues_empty

pytestmark = pytest.mark.integration


@pytest.fixture
def system(mailsystem):
    ms = mailsystem()
    ms.add_service("pop3d", name="pop")
    ms.start()
    return ms


def pop_login(ms, name: str, password: str, apop: bool = False) -> str:
    """The server's answer to the login: '+OK ...' or the -ERR text."""
    client = poplib.POP3("127.0.0.1", ms.port("pop"), timeout=10)
    try:
        if apop:
            return client.apop(name, password).decode()
        client.user(name)
        return client.pass_(password).decode()
    except poplib.error_proto as e:
        return e.args[0].decode()
    finally:
        client.quit()


def test_user_lifecycle_seen_by_pop3d(system):
    ms = system
    assert ms.mailctl("user", "add", "bob", "--password-stdin", input="first pw\n").returncode == 0
    assert pop_login(ms, "bob", "first pw").startswith("+OK")
    assert pop_login(ms, "bob", "first pw", apop=True).startswith("+OK")
    assert "[AUTH]" in pop_login(ms, "bob", "wrong")

    ms.mailctl("user", "passwd", "bob", input="second pw\n")
    assert "[AUTH]" in pop_login(ms, "bob", "first pw")
    assert pop_login(ms, "BOB", "second pw").startswith("+OK")

    ms.mailctl("user", "set", "bob", "--disabled")
    assert "disabled" in pop_login(ms, "bob", "second pw")
    ms.mailctl("user", "set", "bob", "--enable", "--protocols", "imap")
    assert "POP3 access is not enabled" in pop_login(ms, "bob", "second pw")
    ms.mailctl("user", "set", "bob", "--protocols", "imap,pop")
    assert pop_login(ms, "bob", "second pw").startswith("+OK")

    ms.mailctl("user", "del", "bob")
    assert "[AUTH] Authentication failed" in pop_login(ms, "bob", "second pw")


def account_names(ms) -> set[str]:
    return {row["user"] for row in json.loads(ms.mailctl("accounts", "--json").stdout)}


def test_user_del_purge_removes_the_mail_and_a_new_user_starts_empty(mailsystem):
    system = delivery_system(mailsystem, users={"bob": (), "carol": ()})
    system.start()
    inbox = Inbox(system)
    try:
        for rcpt in ("bob", "bob", "carol"):
            sendmail(system, "-f", "alice@example.org", rcpt, message=b"Subject: before\n\nbody\n")
        assert len(inbox.wait("bob", 2)) == 2 and len(inbox.wait("carol", 1)) == 1
        assert account_names(system) == {"bob", "carol"}

        assert system.mailctl("user", "del", "bob", "--purge").stdout == "deleted user bob and the mail\n"
        assert account_names(system) == {"carol"}
        assert sorted(p.name for p in (system.var / "store").iterdir()) == ["carol"]
        assert "bob" not in {row["name"] for row in json.loads(system.mailctl("user", "list", "--json").stdout)}

        system.mailctl("user", "add", "bob", "--password", "new-pw")
        assert inbox.messages("bob") == []
        sendmail(system, "-f", "alice@example.org", "bob", message=b"Subject: after\n\nbody\n")
        assert [parse(raw)["Subject"] for raw in inbox.wait("bob", 1)] == ["after"]
        assert inbox.store.mailbox("bob", "INBOX").uidnext == 2 and len(inbox.messages("carol")) == 1
        assert wait_queues_empty(system) == {q: [] for q in ("maildrop", "incoming", "active", "deferred")}
    finally:
        inbox.close()


def test_user_options_list_and_exit_codes(mailsystem):
    ms = mailsystem()
    ms.write_config()
    ms.mailctl("user", "add", "alice", "--password", "pw", "--quota", "500M", "--protocols", "pop",
               "--forward", "alice@elsewhere.example,carol", "--keep-copy", "--full-name", "Alice A")
    ms.mailctl("user", "add", "dave", "--disabled")
    rows = {row["name"]: row for row in json.loads(ms.mailctl("user", "list", "--json").stdout)}
    assert rows["alice"] == {"name": "alice", "enabled": True, "quota": 500 * 1024**2, "protocols": ["pop"],
                             "forward": ["alice@elsewhere.example", "carol"], "keep_copy": True,
                             "full_name": "Alice A",
                             "password_forms": ["apop", "cram-md5", "scram-sha-256", "scrypt"]}
    assert rows["dave"]["enabled"] is False and rows["dave"]["password_forms"] == []

    ms.mailctl("user", "set", "alice", "--quota", "default", "--forward", "", "--no-keep-copy")
    alice = json.loads(ms.mailctl("user", "list", "--json").stdout)[0]
    assert (alice["quota"], alice["forward"], alice["keep_copy"]) == (None, [], False)
    assert "alice" in ms.mailctl("user", "list").stdout

    refused = [("user", "add", "alice"), ("user", "set", "nobody", "--enable"), ("user", "del", "nobody"),
               ("user", "add", "Bad Name"), ("user", "set", "alice", "--forward", "a b"),
               ("user", "passwd", "nobody")]
    for args in refused:
        result = ms.mailctl(*args, check=False, input="")
        assert result.returncode == 1 and result.stderr.count("\n") == 1, args
    empty = ms.mailctl("user", "add", "erin", "--password-stdin", input="\n", check=False)
    assert empty.returncode == 1 and "empty password" in empty.stderr
    usage = [("user", "add"), ("user", "set", "alice", "--quota", "lots"), ("user", "frobnicate"),
             ("user", "add", "x", "--protocols", "smtp"), ("user", "add", "x", "--password", "a", "--password-stdin"),
             ("user", "set", "alice", "--enable", "--disabled")]
    for args in usage:
        assert ms.mailctl(*args, check=False).returncode == 2, args


def test_aliases_build_and_shorthands(mailsystem):
    ms = mailsystem()
    ms.write_config()
    (ms.etc / "aliases").write_text("postmaster: root\nroot: bob, |/bin/true\n")
    assert "2 aliases" in ms.tool("newaliases").stdout
    amap = AliasMap(str(ms.etc / "aliases.lmdb"))
    assert amap.lookup("root") == ["bob", "|/bin/true"]

    (ms.etc / "aliases").write_text("postmaster: admin\nthis is wrong\n")
    result = ms.mailctl("aliases", "build", check=False)
    assert result.returncode == 1 and f"{ms.etc / 'aliases'}:2:" in result.stderr
    assert amap.lookup("postmaster") == ["root"]

    other = ms.etc / "other"
    other.write_text("x: y\n")
    assert ms.tool("postalias", str(other)).returncode == 0
    assert AliasMap(str(other) + ".lmdb").lookup("x") == ["y"]


def test_queue_commands(mailsystem, corpus):
    ms = mailsystem()
    ms.write_config()
    assert ms.tool("mailq").stdout.strip() == "Mail queue is empty"
    queue = Queue(str(ms.var / "queue"))
    queue.ensure_layout()
    ids = []
    for name in ("01-plain.eml", "04-alternative.eml"):
        writer = queue.writer()
        writer.write((corpus / name).read_bytes())
        ids.append(writer.commit(Envelope("alice@example.org", [Recipient("bob@example.test")])))

    listed = json.loads(ms.mailctl("queue", "list", "--json").stdout)
    assert [row["id"] for row in listed] == ids and listed[0]["recipients"][0]["address"] == "bob@example.test"
    assert "Subject:" in ms.mailctl("queue", "show", ids[0]).stdout
    ms.mailctl("queue", "hold", ids[0])
    assert f"{ids[0]}!" in ms.tool("mailq").stdout
    ms.mailctl("queue", "release", ids[0].lower())
    assert "0 deferred" in ms.mailctl("queue", "flush").stdout
    ms.mailctl("queue", "delete", ids[0])
    assert ms.mailctl("queue", "delete", ids[0], check=False).returncode == 1
    assert ms.mailctl("queue", "show", "nonsense", check=False).returncode == 1
    assert "1 messages deleted" in ms.mailctl("queue", "delete", "ALL").stdout
    assert json.loads(ms.mailctl("queue", "list", "--json").stdout) == []


def test_queue_commands_by_destination(mailsystem, corpus):
    """@DOMAIN selects the messages with a recipient pending there; requeue brings deferred
    mail back to incoming; a selection that matches nothing is refused."""
    ms = mailsystem()
    ms.write_config()
    queue = Queue(str(ms.var / "queue"))
    queue.ensure_layout()
    ids = {}
    for name, rcpt in (("01-plain.eml", "bob@example.org"), ("04-alternative.eml", "carol@Example.NET"),
                       ("01-plain.eml", "dave@example.org")):
        writer = queue.writer()
        writer.write((corpus / name).read_bytes())
        ids[rcpt] = writer.commit(Envelope("alice@example.test", [Recipient(rcpt)]))
    org = sorted([ids["bob@example.org"], ids["dave@example.org"]])
    for queue_id in ids.values():
        queue.activate(queue_id)
        queue.defer(queue_id, time.time() + 3600, {"0": "connect to mx.example.org: Connection refused"})
    listed = json.loads(ms.mailctl("queue", "list", "@example.net", "--json").stdout)
    assert [row["id"] for row in listed] == [ids["carol@Example.NET"]]
    assert "1 deferred" in ms.mailctl("queue", "flush", "@EXAMPLE.net").stdout
    held = ms.mailctl("queue", "hold", "@example.org").stdout
    assert sorted(line.split(":")[0] for line in held.splitlines()) == org and queue.ids("hold") == org
    ms.mailctl("queue", "release", "@example.org")
    assert sorted(queue.ids("incoming")) == org
    assert "requeued" in ms.mailctl("queue", "requeue", ids["carol@Example.NET"]).stdout
    assert sorted(queue.ids("incoming")) == sorted(ids.values()) and queue.ids("deferred") == []
    assert "already due" in ms.mailctl("queue", "requeue", "ALL").stdout
    refused = ms.mailctl("queue", "delete", "@example.com", check=False)
    assert refused.returncode == 1 and "no queued message" in refused.stderr
    assert ms.mailctl("queue", "list", "example.org", check=False).returncode == 1
    ms.mailctl("queue", "delete", "@example.org")
    assert queue.ids("incoming") == [ids["carol@Example.NET"]]


def test_apop_digest_is_what_poplib_sends(system):
    """poplib computes md5(timestamp + secret); the server must agree for a non-ASCII secret too."""
    ms = system
    ms.mailctl("user", "add", "zoe", "--password-stdin", input="grüße\n")
    client = poplib.POP3("127.0.0.1", ms.port("pop"), timeout=10)
    try:
        stamp = client.timestamp.search(client.welcome).group(1).decode()
        digest = hashlib.md5((stamp + "grüße").encode()).hexdigest()
        assert client._shortcmd(f"APOP zoe {digest}").startswith(b"+OK")
    finally:
        client.quit()
