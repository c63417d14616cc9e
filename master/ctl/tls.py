"""mailctl tls: the server's certificate and key (tls_cert_file, tls_key_file).

    mailctl tls selfsigned [--hostname H] [--new-key]   self-signed certificate for H
                                                        (default myhostname)
    mailctl tls csr --hostname H [--out PATH]           certificate request for a CA, printed
                                                        and written (default: beside the cert)

Both reuse the key in tls_key_file when there is one (a CSR that is being signed keeps
matching it), else they create an RSA 2048 key. Files are written durably under a
temporary name and renamed; the key is mode 0600. New worker processes load the new files;
`mailctl reload` replaces the running ones.
ensure_certificate(params) is what `mailctl init` uses: a self-signed certificate only when
none is there yet.
Diagnostics: a bad host name, an unreadable or encrypted key, or a write error is refused
with a one-line reason (exit 1).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from master.ctl import Refused
from store.fsio import StorageError, write_durably

VALID_DAYS = 825                    # the longest validity clients still accept for a server certificate
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\.?")


def register(sub) -> None:
    tls = sub.add_parser("tls", help="the server certificate and key")
    actions = tls.add_subparsers(dest="tls_action", required=True, metavar="ACTION")
    selfsigned = actions.add_parser("selfsigned", help="write a self-signed certificate")
    selfsigned.add_argument("--hostname", help="name in the certificate (default: myhostname)")
    selfsigned.add_argument("--new-key", action="store_true", help="replace the key as well")
    selfsigned.set_defaults(handler=cmd_selfsigned)
    csr = actions.add_parser("csr", help="write a certificate signing request for a CA")
    csr.add_argument("--hostname", required=True, help="name to certify")
    csr.add_argument("--out", help="where to write the request (default: HOSTNAME.csr beside the certificate)")
    csr.set_defaults(handler=cmd_csr)


# ---------------------------------------------------------------- building blocks

def _subject_alt_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    if len(hostname) > 253 or not _HOSTNAME.fullmatch(hostname):
        raise Refused(f"bad host name {hostname!r}")
    return x509.DNSName(hostname.rstrip("."))


def _name(hostname: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname.rstrip(".")[:64])])


def _write(path: str, data: bytes, mode: int) -> None:
    """Write durably; as root the file takes its folder's owner (mail_owner's tls/ folder:
    the workers can read a key that `mailctl tls` made as root)."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_durably(directory, os.path.basename(path), data, mode=mode)
        if os.geteuid() == 0:
            folder = os.stat(directory)
            os.chown(path, folder.st_uid, folder.st_gid, follow_symlinks=False)
    except OSError as e:
        raise Refused(f"cannot create {directory}: {e.strerror}") from None
    except StorageError as e:
        raise Refused(str(e)) from None


def load_or_create_key(key_file: str, new: bool = False) -> tuple[rsa.RSAPrivateKey, bool]:
    """The key in key_file, or a new one written there (mode 0600); -> (key, created)."""
    if not new and os.path.exists(key_file):
        try:
            with open(key_file, "rb") as f:
                return serialization.load_pem_private_key(f.read(), password=None), False
        except (OSError, ValueError, TypeError) as e:
            raise Refused(f"cannot use the key {key_file}: {e} (use --new-key to replace it)") from None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write(key_file, pem, 0o600)
    return key, True


def build_selfsigned(key, hostname: str) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(hostname)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_subject_alt_name(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_csr(key, hostname: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(hostname))
        .add_extension(x509.SubjectAlternativeName([_subject_alt_name(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def write_selfsigned(params, hostname: str, new_key: bool = False) -> x509.Certificate:
    _subject_alt_name(hostname)                       # refuse a bad name before touching the key
    key, _ = load_or_create_key(params.tls_key_file, new=new_key)
    cert = build_selfsigned(key, hostname)
    _write(params.tls_cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def ensure_certificate(params) -> x509.Certificate | None:
    """A self-signed certificate for myhostname unless both files exist; -> the new one or None."""
    if os.path.exists(params.tls_cert_file) and os.path.exists(params.tls_key_file):
        return None
    return write_selfsigned(params, params.myhostname)


# ---------------------------------------------------------------- commands

def cmd_selfsigned(args, config) -> int:
    params = config.params
    cert = write_selfsigned(params, args.hostname or params.myhostname, new_key=args.new_key)
    print(f"wrote {params.tls_cert_file}: self-signed for {args.hostname or params.myhostname}, "
          f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"key {params.tls_key_file}")
    print(f"SHA-256 fingerprint {fingerprint(cert)}")
    return 0


def cmd_csr(args, config) -> int:
    params = config.params
    _subject_alt_name(args.hostname)
    out = args.out or os.path.join(os.path.dirname(params.tls_cert_file), f"{args.hostname.rstrip('.').replace('*', 'wildcard')}.csr")
    key, created = load_or_create_key(params.tls_key_file)
    pem = build_csr(key, args.hostname).public_bytes(serialization.Encoding.PEM)
    _write(out, pem, 0o644)
    sys.stdout.write(pem.decode())
    print(f"wrote {out}; key {params.tls_key_file} ({'new' if created else 'existing'}). "
          f"Install the signed certificate as {params.tls_cert_file} and run `mailctl reload`.", file=sys.stderr)
    return 0
