"""TLS contexts for the services (server side) and outgoing SMTP (client side).

server_context(params) -> ssl.SSLContext from tls_cert_file / tls_key_file, TLS 1.2 or
    newer; built once per (cert, key) pair and cached for the process.
    Raises TLSUnavailable (str: why) when the files are missing or unusable: a service
    then simply does not offer STARTTLS/STLS, and wrapper-mode connections are closed.
tls_available(params) -> bool, the same check without raising.
client_context(verify=False, ca_file="") -> ssl.SSLContext for STARTTLS to other servers
    (workers/smtp), cached per argument pair. Postfix's `may` and `encrypt` levels encrypt
    without verifying the peer (verify=False); verify=True checks the certificate chain and
    the host name against ca_file (smtp_tls_ca_file) or, when it is empty, the system's
    trust store.
Diagnostics: TLSUnavailable carries the file name and the OpenSSL reason.
"""
from __future__ import annotations

import functools
import ssl


class TLSUnavailable(Exception):
    """No usable certificate/key: TLS cannot be offered."""


def server_context(params) -> ssl.SSLContext:
    return _server_context(params.tls_cert_file, params.tls_key_file)


@functools.lru_cache(maxsize=4)
def _server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as e:
        raise TLSUnavailable(f"{e.filename}: no such file") from None
    except (OSError, ssl.SSLError) as e:
        raise TLSUnavailable(f"{cert_file}, {key_file}: {e}") from None
    return ctx


def tls_available(params) -> bool:
    try:
        server_context(params)
    except TLSUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=4)
def client_context(verify: bool = False, ca_file: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None) if verify else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
