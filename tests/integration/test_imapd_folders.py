"""imapd's mailbox commands through the real master: NAMESPACE, LIST (with LIST-EXTENDED,
LIST-STATUS, SPECIAL-USE), LSUB, CREATE (CREATE-SPECIAL-USE), DELETE, RENAME (INBOX too),
SUBSCRIBE/UNSUBSCRIBE, STATUS (STATUS=SIZE) and QUOTA (GETQUOTAROOT, GETQUOTA, SETQUOTA by
an imap_admins user), with imaplib and a line-level client for
the extended syntax; the special-use folders a first login makes; modified UTF-7 names;
the errors and their response codes.
"""
from __future__ import annotations

import imaplib
import re

import pytest

from tests.conftest import CORPUS
from tests.integration.imapd_support import Client, ImapSystem, login

pytestmark = pytest.mark.integration
PASSWORD = "Folder pass 1"
ADMIN = "quotaboss"
DEFAULTS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-folders"), main={"imap_admins": ADMIN})
    running.add_user(ADMIN, PASSWORD)
    yield running
    running.stop()


@pytest.fixture
def user(system, request):
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[-40:]
    system.add_user(name, PASSWORD)
    return name


@pytest.fixture
def raw(system, user):
    client = Client(system.port(), user, PASSWORD)
    yield client
    client.close()


@pytest.fixture
def client(system, user):
    c = login(system.port(), user, PASSWORD)
    yield c
    try:
        c.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


LIST_LINE = re.compile(r'\* (?:LIST|LSUB) \(([^)]*)\) "/" "((?:[^"\\]|\\.)*)"(.*)')


def mailbox(system, user: str, name: str):
    """The store's MailboxInfo of a mailbox (None: there is none)."""
    with system.store() as store:
        return store.mailbox(user, name)


def listed(lines: list) -> dict[str, set[str]]:
    """{name: attributes} of LIST/LSUB responses (imaplib's bytes or the raw client's lines)."""
    out = {}
    for line in lines:
        text = line.decode() if isinstance(line, bytes) else line
        match = LIST_LINE.match(text if text.startswith("*") else "* LIST " + text)
        if match:
            out[match.group(2)] = set(match.group(1).split())
    return out


def status_of(lines: list[str], name: str) -> dict[str, int]:
    for line in lines:
        match = re.fullmatch(r'\* STATUS "?(.*?)"? \((.*)\)', line)
        if match and match.group(1) == name:
            words = match.group(2).split()
            return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    raise AssertionError(f"no STATUS for {name}: {lines}")


def no_code(client, call, *args) -> str:
    """The text of a NO for an imaplib call."""
    typ, data = call(*args)
    assert typ == "NO", (typ, data)
    return data[0].decode()


def test_first_login_has_special_use_folders(client):
    typ, data = client.list()
    assert typ == "OK"
    boxes = listed(data)
    assert set(boxes) == {"INBOX", *DEFAULTS}
    for name, use in DEFAULTS.items():
        assert boxes[name] == {use, "\\HasNoChildren"}
    assert boxes["INBOX"] == {"\\HasNoChildren"}
    typ, data = client.lsub()
    assert set(listed(data)) == {"INBOX", *DEFAULTS}


def test_namespace_capability_and_delimiter(client, raw):
    typ, data = client.namespace()
    assert typ == "OK" and data == [b'(("" "/")) (("user/" "/")) (("shared/" "/"))']
    typ, data = client.capability()
    words = data[0].decode().split()
    for word in ("NAMESPACE", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS",
                 "STATUS=SIZE"):
        assert word in words
    lines, done = raw.cmd('LIST "" ""')
    assert lines == ['* LIST (\\Noselect) "/" ""'] and done.startswith("OK")
    lines, done = raw.cmd('LSUB "Work" ""')
    assert lines == ['* LSUB (\\Noselect) "/" ""'] and done.startswith("OK")


def test_create_hierarchy_and_wildcards(client, raw):
    assert client.create("Work/2024/Q1")[0] == "OK"          # the parents are made too
    assert client.create("Projects/")[0] == "OK"             # trailing delimiter dropped
    assert client.create("INBOX/Lists")[0] == "OK"
    boxes = listed(client.list()[1])
    assert {"Work", "Work/2024", "Work/2024/Q1", "Projects", "INBOX/Lists"} <= set(boxes)
    assert "\\HasChildren" in boxes["Work"] and "\\HasNoChildren" in boxes["Work/2024/Q1"]
    assert "\\HasChildren" in boxes["INBOX"]
    top = listed(client.list('""', "%")[1])
    assert set(top) == {"INBOX", "Work", "Projects", *DEFAULTS}
    assert set(listed(client.list("Work/", "%")[1])) == {"Work/2024"}
    assert set(listed(client.list("Work", "/*")[1])) == {"Work/2024", "Work/2024/Q1"}
    assert set(listed(client.list('""', "Work/*")[1])) == {"Work/2024", "Work/2024/Q1"}
    assert set(listed(client.list('""', "W%")[1])) == {"Work"}
    assert set(listed(client.list('""', "inbox/%")[1])) == {"INBOX/Lists"}
    assert set(listed(client.list('""', "inbox")[1])) == {"INBOX"}
    lines, done = raw.cmd('LIST "" ("Work" "Projects" "Sent")')
    assert set(listed(lines)) == {"Work", "Projects", "Sent"} and done.startswith("OK")


def test_create_errors(client, raw):
    assert "[ALREADYEXISTS]" in no_code(client, client.create, "INBOX")
    assert "[ALREADYEXISTS]" in no_code(client, client.create, "inbox")
    assert "[ALREADYEXISTS]" in no_code(client, client.create, "Sent")
    assert "[CANNOT]" in no_code(client, client.create, "a//b")
    _, done = raw.cmd('CREATE "Bad&Jjo"')                     # not valid modified UTF-7: a NO, as Dovecot
    assert done.startswith("NO [CANNOT]"), done
    _, done = raw.cmd("CREATE")
    assert done.startswith("BAD")
    _, done = raw.cmd('CREATE "X" (FOO (BAR))')
    assert done.startswith("BAD")


def test_create_special_use(raw, system, user):
    lines, done = raw.cmd(r'CREATE "Sent Items" (USE (\Sent))')
    assert done.startswith("OK"), done
    assert mailbox(system, user, "Sent Items").special_use == "\\Sent"
    _, done = raw.cmd(r'CREATE "Everything" (USE (\All))')
    assert done.startswith("NO [USEATTR]")
    _, done = raw.cmd(r'CREATE "Two" (USE (\Sent \Trash))')
    assert done.startswith("NO [USEATTR]")
    lines, _ = raw.cmd('LIST "" "Everything"')
    assert lines == []                                        # not created
    lines, done = raw.cmd('LIST (SPECIAL-USE) "" "*"')
    boxes = listed(lines)
    assert set(boxes) == {"Sent Items", *DEFAULTS} and done.startswith("OK")
    assert "\\Sent" in boxes["Sent Items"]
    lines, _ = raw.cmd('LIST "" "Sent*" RETURN (SPECIAL-USE)')
    assert listed(lines) == {"Sent": {"\\Sent", "\\HasNoChildren"}, "Sent Items": {"\\Sent", "\\HasNoChildren"}}


def test_modified_utf7_names_round_trip(client, raw, system, user):
    assert client.create('"Entw&APw-rfe"')[0] == "OK"
    assert client.create('"Entw&APw-rfe/&ZeVnLIqe-"')[0] == "OK"
    assert client.create('"Tom &- Jerry"')[0] == "OK"
    for name in ("Entwürfe", "Entwürfe/日本語", "Tom & Jerry"):
        assert mailbox(system, user, name) is not None
    boxes = listed(client.list('""', "*")[1])
    assert {"Entw&APw-rfe", "Entw&APw-rfe/&ZeVnLIqe-", "Tom &- Jerry"} <= set(boxes)
    assert set(listed(client.list("Entw&APw-rfe/", "%")[1])) == {"Entw&APw-rfe/&ZeVnLIqe-"}
    assert client.select('"Entw&APw-rfe"')[0] == "OK"
    lines, _ = raw.cmd('STATUS "Tom &- Jerry" (MESSAGES)')
    assert lines == ['* STATUS "Tom &- Jerry" (MESSAGES 0)']


def test_rename_with_children_and_errors(client, system, user):
    for name in ("Old/A", "Old/B/C", "Other"):
        assert client.create(name)[0] == "OK"
    system.deliver(user, "01-plain.eml", "04-alternative.eml", mailbox="Old/A")
    validity = mailbox(system, user, "Old/A").uidvalidity
    assert client.select("Old/A")[0] == "OK"
    assert client.rename("Old", "New/Place")[0] == "OK"
    boxes = set(listed(client.list()[1]))
    assert {"New", "New/Place", "New/Place/A", "New/Place/B", "New/Place/B/C"} <= boxes
    assert not any(b.startswith("Old") for b in boxes)
    info = mailbox(system, user, "New/Place/A")
    assert (info.uidvalidity, info.count) == (validity, 2)
    assert client.noop()[0] == "OK"                            # the selected mailbox followed: no BYE
    typ, data = client.fetch("1", "(BODY.PEEK[])")             # and its files, under the new name
    assert typ == "OK" and data[0][1] == (CORPUS / "01-plain.eml").read_bytes(), data
    assert client.close()[0] == "OK"
    assert "[ALREADYEXISTS]" in no_code(client, client.rename, "Other", "New")
    assert "[ALREADYEXISTS]" in no_code(client, client.rename, "Other", "inbox")
    assert "[NONEXISTENT]" in no_code(client, client.rename, "Nowhere", "Else")
    assert "[CANNOT]" in no_code(client, client.rename, "New", "New/Inner")


def test_rename_inbox_moves_its_messages(client, system, user):
    client.create("INBOX/Kept")
    uids = system.deliver(user, "01-plain.eml", "02-utf8-8bit.eml", "05-mixed-attachment.eml")
    assert client.select("INBOX")[0] == "OK"
    assert client.rename("INBOX", '"Old Mail"')[0] == "OK"
    assert mailbox(system, user, "Old Mail").count == 3
    assert mailbox(system, user, "INBOX").count == 0
    assert mailbox(system, user, "INBOX/Kept") is not None     # INBOX's children stay
    assert client.noop()[0] == "OK"
    assert len(client.response("EXPUNGE")[1]) == len(uids)     # the selected INBOX saw them go
    _, data = client.status("INBOX", "(MESSAGES)")
    assert data == [b'"INBOX" (MESSAGES 0)']
    _, data = client.status('"Old Mail"', "(MESSAGES)")
    assert data == [b'"Old Mail" (MESSAGES 3)']
    assert client.rename("INBOX", '"Empty Again"')[0] == "OK"  # an empty INBOX: an empty new mailbox
    assert mailbox(system, user, "Empty Again").count == 0
    assert "[ALREADYEXISTS]" in no_code(client, client.rename, "INBOX", '"Old Mail"')


def test_delete(client, raw, system, user):
    client.create("Box/Child")
    assert "[ALREADYEXISTS]" in no_code(client, client.delete, "Box")    # has children, as Dovecot
    assert "[NONEXISTENT]" in no_code(client, client.delete, "Nowhere")
    assert "[CANNOT]" in no_code(client, client.delete, "INBOX")
    system.deliver(user, "03-quoted-printable.eml", mailbox="Box/Child")
    assert client.delete("Box/Child")[0] == "OK"
    assert client.delete("Box")[0] == "OK"
    assert not {"Box", "Box/Child"} & set(listed(client.list()[1]))
    assert client.create("Box")[0] == "OK"                  # the name can be used again
    _, done = raw.cmd("SELECT Box")
    assert done.startswith("OK")
    _, done = raw.cmd("DELETE Box")                         # the selected one: unselected
    assert done.startswith("OK"), done
    _, done = raw.cmd("CLOSE")
    assert done.startswith("BAD")
    _, done = raw.cmd("NOOP")
    assert done.startswith("OK")


def test_subscriptions(client, raw):
    for name in ("Lists/python", "Lists/rust", "Lists/go/nuts"):
        client.create(name)
    assert client.subscribe("Lists/rust")[0] == "OK"
    assert client.subscribe("Lists/go/nuts")[0] == "OK"
    assert client.unsubscribe("Trash")[0] == "OK"
    subscribed = set(listed(client.lsub()[1]))
    assert subscribed == {"INBOX", "Sent", "Drafts", "Junk", "Archive", "Lists/rust", "Lists/go/nuts"}
    lsub = listed(client.lsub('""', "%")[1])
    assert lsub["Lists"] == {"\\Noselect"}                   # % stopped above subscribed ones
    assert "Trash" not in lsub
    assert listed(client.lsub("Lists/", "%")[1]) == {"Lists/rust": set(), "Lists/go": {"\\Noselect"}}
    lines, _ = raw.cmd('LIST (SUBSCRIBED) "" "Lists/*"')
    assert listed(lines) == {"Lists/rust": {"\\HasNoChildren", "\\Subscribed"},
                             "Lists/go/nuts": {"\\HasNoChildren", "\\Subscribed"}}
    lines, _ = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert 'Lists" ("CHILDINFO" ("SUBSCRIBED"))' in next(line for line in lines if '"Lists"' in line)
    assert listed(lines)["Lists"] == {"\\HasChildren"}
    assert "Trash" not in listed(lines) and listed(lines)["Sent"] == {"\\Sent", "\\HasNoChildren", "\\Subscribed"}
    lines, _ = raw.cmd('LIST "" "Lists/%" RETURN (SUBSCRIBED CHILDREN)')
    assert listed(lines) == {"Lists/python": {"\\HasNoChildren"}, "Lists/rust": {"\\HasNoChildren", "\\Subscribed"},
                             "Lists/go": {"\\HasChildren"}}
    lines, _ = raw.cmd('LIST (REMOTE) "" "Lists"')
    assert listed(lines) == {"Lists": {"\\HasChildren"}}


def test_subscriptions_are_names_apart_from_the_mailboxes(client, raw, system, user):
    """RFC 3501 6.3.6 / RFC 5258 3.1, as Dovecot: a subscription need not name a mailbox."""
    assert client.subscribe("Nowhere/deep")[0] == "OK"
    assert client.create("Lists/rust")[0] == "OK"
    assert client.subscribe("Lists/rust")[0] == "OK"
    assert client.delete("Lists/rust")[0] == "OK"           # the subscription stays
    assert {"Lists/rust": set(), "Nowhere/deep": set()}.items() <= listed(client.lsub()[1]).items()
    assert listed(client.lsub('""', "%")[1])["Nowhere"] == {"\\Noselect"}
    lines, done = raw.cmd('LIST (SUBSCRIBED) "" "*"')
    boxes = listed(lines)
    assert {"\\NonExistent", "\\Subscribed"} <= boxes["Lists/rust"] and "\\Noselect" not in boxes["Lists/rust"]
    assert {"\\NonExistent", "\\Subscribed"} <= boxes["Nowhere/deep"] and "Nowhere" not in boxes
    assert "Lists/rust" not in listed(client.list()[1])    # a plain LIST shows mailboxes only
    assert client.create("Lists/rust")[0] == "OK"           # created again: subscribed again
    assert mailbox(system, user, "Lists/rust").subscribed
    lines, _ = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Nowhere"')
    assert lines == ['* LIST (\\NonExistent \\HasNoChildren) "/" "Nowhere" ("CHILDINFO" ("SUBSCRIBED"))']
    lines, _ = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" ("Nowhere" "Nowhere/deep")')
    assert set(listed(lines)) == {"Nowhere/deep"}           # the subscribed child is listed itself
    assert client.create("Lists/rust/old")[0] == "OK"
    assert client.subscribe("Lists/rust/old")[0] == "OK"
    assert client.rename("Lists", "Feeds")[0] == "OK"      # subscriptions move with the tree
    subscribed = set(listed(client.lsub('""', "*")[1]))
    assert {"Feeds/rust", "Feeds/rust/old"} <= subscribed and not any(n.startswith("Lists") for n in subscribed)
    assert mailbox(system, user, "Feeds/rust/old").subscribed
    assert client.unsubscribe("Nowhere/deep")[0] == "OK"
    assert "Nowhere/deep" not in listed(client.lsub()[1])


ATOM_CHARS = "!#$&'+,-.0123456789:;<=>?@^_`|[}"             # imaptest's `atoms`: `&'` is not modified UTF-7


def test_invalid_modified_utf7_names_do_not_exist(raw):
    for command in ("SELECT", "EXAMINE", "STATUS", "DELETE", "SUBSCRIBE"):
        args = " (MESSAGES)" if command == "STATUS" else ""
        _, done = raw.cmd(f"{command} {ATOM_CHARS}{args}")
        assert done.startswith("NO [CANNOT]"), (command, done)
    lines, done = raw.cmd(f'LIST "" {ATOM_CHARS}%*')
    assert lines == [] and done.startswith("OK"), (lines, done)
    lines, done = raw.cmd('LSUB "&Jjo" "*"')
    assert lines == [] and done.startswith("OK"), (lines, done)
    lines, done = raw.cmd('LIST "" NIL')                     # NIL is a name here (imaptest's `nil`)
    assert lines == [] and done.startswith("OK"), (lines, done)


def test_status_counts(client, raw, system, user):
    names = ["01-plain.eml", "06-nested-multipart.eml", "07-forwarded-rfc822.eml"]
    uids = system.deliver(user, *names)
    with system.store() as store:
        store.set_flags(user, "INBOX", [(uids[0], uids[0])], "+", ["\\Seen"])
    size = sum(len((CORPUS / n).read_bytes()) for n in names)
    validity = mailbox(system, user, "INBOX").uidvalidity
    lines, done = raw.cmd("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)")
    assert done.startswith("OK")
    assert status_of(lines, "INBOX") == {"MESSAGES": 3, "RECENT": 3, "UIDNEXT": uids[-1] + 1,
                                         "UIDVALIDITY": validity, "UNSEEN": 2, "SIZE": size}
    assert client.select("INBOX")[0] == "OK" and client.response("RECENT")[1] == [b"3"]   # claimed here
    assert client.unselect()[0] == "OK"
    lines, _ = raw.cmd("STATUS INBOX (RECENT)")
    assert status_of(lines, "INBOX") == {"RECENT": 0}
    _, data = client.status("Sent", "(MESSAGES UNSEEN)")
    assert data == [b'"Sent" (MESSAGES 0 UNSEEN 0)']
    lines, done = raw.cmd('LIST "" "%" RETURN (STATUS (MESSAGES SIZE))')
    assert done.startswith("OK")
    assert status_of(lines, "INBOX") == {"MESSAGES": 3, "SIZE": size}
    assert status_of(lines, "Trash") == {"MESSAGES": 0, "SIZE": 0}
    assert lines.index(next(line for line in lines if line.startswith('* LIST') and '"INBOX"' in line)) + 1 == \
        lines.index(next(line for line in lines if line.startswith('* STATUS "INBOX"')))
    assert "[NONEXISTENT]" in no_code(client, client.status, "Nowhere", "(MESSAGES)")
    for bad in ("STATUS INBOX (BOGUS)", "STATUS INBOX ()", "STATUS INBOX", 'LIST "" "*" RETURN (STATUS ())'):
        _, done = raw.cmd(bad)
        assert done.startswith("BAD"), bad


def test_list_syntax_errors(raw):
    for bad in ('LIST (BOGUS) "" "*"', 'LIST (RECURSIVEMATCH) "" "*"', 'LIST (REMOTE RECURSIVEMATCH) "" "*"',
                'LIST "" "*" RETURN (BOGUS)', 'LIST "" "*" RETURN', 'LIST "" "*" EXTRA (X)', 'LIST ""',
                'LIST "" ()', "LSUB", "NAMESPACE X", "SUBSCRIBE", "RENAME A"):
        _, done = raw.cmd(bad)
        assert done.startswith("BAD"), (bad, done)
    lines, done = raw.cmd('LIST () "" "INBOX" RETURN ()')
    assert listed(lines) == {"INBOX": {"\\HasNoChildren"}} and done.startswith("OK")


def test_quota_roots(system, user, raw):
    lines, done = raw.cmd("GETQUOTAROOT INBOX")
    assert lines == ['* QUOTAROOT "INBOX" ""', '* QUOTA "" ()'] and done.startswith("OK")   # no quota
    other = user + "q"
    system.add_user(other, PASSWORD, quota=2 * 1024 * 1024)
    system.deliver(other, "05-mixed-attachment.eml", "06-nested-multipart.eml")
    with system.store() as store:
        used = store.usage(other) // 1024
    limited = Client(system.port(), other, PASSWORD)
    try:
        lines, done = limited.cmd("GETQUOTAROOT Sent")
        assert lines == ['* QUOTAROOT "Sent" ""', f'* QUOTA "" (STORAGE {used} 2048)'] and done.startswith("OK")
        lines, _ = limited.cmd('GETQUOTA ""')
        assert lines == [f'* QUOTA "" (STORAGE {used} 2048)']
        _, done = limited.cmd('SETQUOTA "" (STORAGE 99999)')
        assert done.startswith("NO [NOPERM]")
        _, done = limited.cmd(f'GETQUOTA "{user}"')               # only admins see other roots
        assert done.startswith("NO [NONEXISTENT]")
        _, done = limited.cmd("GETQUOTAROOT Nowhere")
        assert done.startswith("NO [NONEXISTENT]")
        for bad in ("GETQUOTA", "GETQUOTAROOT", 'SETQUOTA "" STORAGE', 'SETQUOTA "" (STORAGE)',
                    'SETQUOTA "" (STORAGE x)'):
            _, done = limited.cmd(bad)
            assert done.startswith("BAD"), bad
    finally:
        limited.close()
    admin = Client(system.port(), ADMIN, PASSWORD)
    try:
        lines, done = admin.cmd(f'SETQUOTA "{other}" (STORAGE 4096)')
        assert lines == [f'* QUOTA "{other}" (STORAGE {used} 4096)'] and done.startswith("OK"), done
        _, done = admin.cmd(f'SETQUOTA "{other}" (MESSAGE 10)')
        assert done.startswith("NO [CANNOT]")
        _, done = admin.cmd('SETQUOTA "nobody-here" (STORAGE 1)')
        assert done.startswith("NO [NONEXISTENT]")
        lines, _ = admin.cmd(f'GETQUOTA "{user}"')
        assert lines == [f'* QUOTA "{user}" ()']
    finally:
        admin.close()
    limited = Client(system.port(), other, PASSWORD)
    try:
        lines, _ = limited.cmd('GETQUOTA ""')
        assert lines == [f'* QUOTA "" (STORAGE {used} 4096)']   # the new limit, read anew
    finally:
        limited.close()


def test_admins_see_other_users_read_only(system, user, raw):
    raw.cmd("CREATE Work/2024")
    system.deliver(user, "05-mixed-attachment.eml", "06-nested-multipart.eml", mailbox="Work/2024")
    system.deliver(user, "03-quoted-printable.eml")
    lines, _ = raw.cmd("NAMESPACE")
    assert lines == ['* NAMESPACE (("" "/")) (("user/" "/")) (("shared/" "/"))']
    for command in ("SELECT user", f"SELECT user/{user}", f"EXAMINE user/{user}/Work", "CREATE user/x",
                    f"STATUS user/{user} (MESSAGES)"):
        _, done = raw.cmd(command)
        assert done.startswith("NO [NONEXISTENT]"), (command, done)   # no such namespace for them
    admin = Client(system.port(), ADMIN, PASSWORD)
    try:
        lines, _ = admin.cmd("NAMESPACE")
        assert lines == ['* NAMESPACE (("" "/")) (("user/" "/")) (("shared/" "/"))']
        lines, _ = admin.cmd(f'LIST "" "user/{user}/*"')
        boxes = listed(lines)
        assert {f"user/{user}/Work", f"user/{user}/Work/2024", f"user/{user}/Sent"} <= set(boxes)
        lines, _ = admin.cmd('LIST "" "%"')
        assert listed(lines)["user"] == {"\\Noselect", "\\HasChildren"} and "INBOX" in listed(lines)
        lines, _ = admin.cmd('LIST "user/" "%"')
        assert listed(lines)[f"user/{user}"] == {"\\HasChildren"}              # the user's INBOX
        lines, _ = admin.cmd(f"STATUS user/{user}/Work/2024 (MESSAGES)")
        assert status_of(lines, f"user/{user}/Work/2024") == {"MESSAGES": 2}
        lines, done = admin.cmd(f"SELECT user/{user}")
        assert "* 1 EXISTS" in lines and done.startswith("OK [READ-ONLY]"), done
        lines, done = admin.cmd(f"SELECT user/{user}/Work/2024")
        assert "* 2 EXISTS" in lines and done.startswith("OK [READ-ONLY]"), done
        lines, done = admin.cmd("FETCH 2 (RFC822.SIZE)")
        assert done.startswith("OK") and len(lines) == 1
        _, done = admin.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert done.startswith("NO [READ-ONLY]")
        _, done = admin.cmd("COPY 1 INBOX")
        assert done.startswith("OK [COPYUID")              # reading includes copying out (ACL r)
        _, done = admin.cmd(f"SELECT user/{user}/Nowhere")
        assert done.startswith("NO [NONEXISTENT]")
    finally:
        admin.close()
    with system.store() as store:
        assert not any("\\Deleted" in m.flags for m in store.open_mailbox(user, "Work/2024").messages())
