"""SMTP AUTH and relay control through the real master.

Every mechanism of smtpd_sasl_mechanisms with the right and a wrong password (smtplib's
PLAIN / LOGIN / CRAM-MD5 and a small SCRAM-SHA-256 client), AUTH under
smtpd_tls_security_level=encrypt, and the relay table cell by cell: authenticated or not x
client inside or outside mynetworks x local or remote recipient, for the default
restrictions and for the submission port's `permit_sasl_authenticated, reject`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import smtplib
import ssl

import pytest

from tests.integration.smtpd_support import add_user, client, queued, smtp_system, swaks

pytestmark = pytest.mark.integration

INSIDE, OUTSIDE = "127.0.0.2", "127.0.0.3"
NETWORKS = {"mynetworks": f"{INSIDE}/32"}


class ScramClient:
    """An RFC 5802 / 7677 client as an smtplib authobject; checks the server's signature."""

    def __init__(self, user: str, password: str):
        self.user, self.password = user, password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"
        self.server_signature = b""

    def __call__(self, challenge: bytes | None = None) -> str:
        if challenge is None:
            return f"n,,{self.first_bare}"
        text = challenge.decode()
        if text.startswith("v="):
            assert base64.b64decode(text[2:]) == self.server_signature, "bad server signature"
            return ""
        attrs = dict(item.split("=", 1) for item in text.split(","))
        assert attrs["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        final_bare = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{self.first_bare},{text},{final_bare}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_message, "sha256").digest()
        return f"{final_bare},p={base64.b64encode(proof).decode()}"


def authenticate(smtp: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    smtp.user, smtp.password = user, password
    authobject = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login, "CRAM-MD5": smtp.auth_cram_md5,
                  "SCRAM-SHA-256": ScramClient(user, password)}[mechanism]
    try:
        return smtp.auth(mechanism, authobject, initial_response_ok=mechanism != "CRAM-MD5")
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code, e.smtp_error


@pytest.fixture
def auth_system(mailsystem):
    system, port = smtp_system(mailsystem, NETWORKS)
    system.mailctl("user", "add", "bob", "--password", "s3cret pass")     # the administrator's way, once
    add_user(system, "carol", "pw", enabled=False)
    return system, port


def test_every_mechanism_right_and_wrong(auth_system):
    system, port = auth_system
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"):
        with client(port, source=OUTSIDE) as smtp:
            smtp.ehlo("client.example")
            assert smtp.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
            assert authenticate(smtp, mechanism, "bob", "wrong") == (535, b"5.7.8 Error: authentication failed")
            assert authenticate(smtp, mechanism, "nobody", "s3cret pass")[0] == 535
            assert authenticate(smtp, mechanism, "bob", "s3cret pass") == (235, b"2.7.0 Authentication successful")
            assert smtp.docmd("AUTH", "PLAIN")[0] == 503                      # once per session
        system.wait_for_log("smtp", f"sasl_method={mechanism}, sasl_username=bob")
    with client(port, source=OUTSIDE) as smtp:
        smtp.ehlo("client.example")
        assert authenticate(smtp, "PLAIN", "carol", "pw")[0] == 535           # disabled account
    assert "authentication failed for bob" in system.log("smtp")


def test_encrypt_level_offers_auth_only_after_starttls(mailsystem):
    system, port = smtp_system(mailsystem, {**NETWORKS, "smtpd_tls_security_level": "encrypt"})
    add_user(system, "bob", "pw")
    with client(port, source=OUTSIDE) as smtp:
        smtp.ehlo("client.example")
        assert "auth" not in smtp.esmtp_features
        assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob\0pw").decode())[0] == 530
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("client.example")
        assert "PLAIN" in smtp.esmtp_features["auth"].split()
        assert authenticate(smtp, "PLAIN", "bob", "pw")[0] == 235
        smtp.sendmail("bob@example.test", ["friend@remote.example"], b"Subject: relayed\r\n\r\nhi\r\n")
    [item] = queued(system)
    assert [r.address for r in item.envelope.recipients] == ["friend@remote.example"]


def relay_table(port: int) -> dict[tuple[bool, bool, bool], int]:
    """(authenticated, in mynetworks, local recipient) -> RCPT reply code."""
    table = {}
    for authenticated in (True, False):
        for inside in (True, False):
            with client(port, source=INSIDE if inside else OUTSIDE) as smtp:
                smtp.ehlo("client.example")
                if authenticated:
                    assert authenticate(smtp, "PLAIN", "bob", "s3cret pass")[0] == 235
                for local in (True, False):
                    smtp.mail("sender@remote.example")
                    table[authenticated, inside, local] = smtp.rcpt(
                        "bob@example.test" if local else "someone@remote.example")[0]
                    smtp.rset()
    return table


def test_relay_table_with_the_default_restrictions(auth_system):
    _, port = auth_system
    assert relay_table(port) == {
        (True, True, True): 250, (True, True, False): 250,
        (True, False, True): 250, (True, False, False): 250,
        (False, True, True): 250, (False, True, False): 250,
        (False, False, True): 250, (False, False, False): 554,
    }


def test_relay_table_of_the_submission_port(mailsystem):
    system, port = smtp_system(mailsystem, NETWORKS, args=(
        "-o", "smtpd_relay_restrictions=permit_sasl_authenticated,reject"))
    add_user(system, "bob", "s3cret pass")
    assert relay_table(port) == {
        (True, True, True): 250, (True, True, False): 250,
        (True, False, True): 250, (True, False, False): 250,
        (False, True, True): 250, (False, True, False): 554,
        (False, False, True): 250, (False, False, False): 554,
    }
    with client(port, source=OUTSIDE) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@remote.example")
        assert smtp.rcpt("someone@remote.example") == (554, b"5.7.1 Relay access denied")


def test_swaks_submission_with_starttls_and_auth(auth_system):
    system, port = auth_system
    base = ["--server", f"127.0.0.1:{port}", "--local-interface", OUTSIDE, "--tls",
            "--from", "bob@example.test", "--to", "friend@remote.example", "--auth-user", "bob"]
    for mechanism in ("CRAM-MD5", "PLAIN", "LOGIN"):
        wrong = swaks(*base, "--auth", mechanism, "--auth-password", "wrong")
        assert wrong.returncode != 0 and "535 5.7.8" in wrong.stdout
        right = swaks(*base, "--auth", mechanism, "--auth-password", "s3cret pass")
        assert right.returncode == 0, right.stdout + right.stderr
    assert len(queued(system)) == 3


def test_no_auth_in_clear_text_outside_the_exempt_networks(mailsystem):
    """smtpd_tls_auth_only (default yes): AUTH only after STARTTLS, except from the exempt networks."""
    system, port = smtp_system(mailsystem, {**NETWORKS, "smtpd_tls_auth_only_exceptions": f"{INSIDE}/32"})
    add_user(system, "bob", "pw")
    with client(port, source=OUTSIDE) as smtp:
        smtp.ehlo("client.example")
        assert "auth" not in smtp.esmtp_features and "starttls" in smtp.esmtp_features
        assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob\0pw").decode()) == (
            538, b"5.7.11 Encryption required for requested authentication mechanism")
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("client.example")
        assert smtp.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
        assert authenticate(smtp, "PLAIN", "bob", "pw")[0] == 235
    with client(port, source=INSIDE) as smtp:                                 # exempt: local tools
        smtp.ehlo("client.example")
        assert authenticate(smtp, "LOGIN", "bob", "pw")[0] == 235
    clear = swaks("--server", f"127.0.0.1:{port}", "--local-interface", OUTSIDE, "--from", "bob@example.test",
                  "--to", "friend@remote.example", "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "pw")
    assert clear.returncode != 0 and " -> AUTH" not in clear.stdout        # swaks finds no AUTH: sends no password
    assert queued(system) == []
