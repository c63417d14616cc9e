"""mailctl tls selfsigned / csr: files, modes, names, key reuse, refusals."""
from __future__ import annotations

import ssl
import stat

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from master.ctl import load_config, run
from master.ctl.tls import ensure_certificate


def setup_config(tmp_path) -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("myhostname = mail.example.test\ndata_directory = ../var\n")
    (etc / "master.cf").write_text("")
    return str(etc)


def load_cert(tmp_path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((tmp_path / "var" / "tls" / "cert.pem").read_bytes())


def public_pem(obj) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def san_names(obj) -> list[str]:
    return obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_selfsigned_defaults_to_myhostname_and_loads_in_ssl(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "tls", "selfsigned"]) == 0
    tls = tmp_path / "var" / "tls"
    assert stat.S_IMODE((tls / "key.pem").stat().st_mode) == 0o600
    cert = load_cert(tmp_path)
    assert san_names(cert) == ["mail.example.test"]
    assert cert.issuer == cert.subject
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls / "cert.pem", tls / "key.pem")       # the pair matches
    out = capsys.readouterr().out
    assert "SHA-256 fingerprint" in out and str(tls / "cert.pem") in out
    assert sorted(p.name for p in tls.iterdir()) == ["cert.pem", "key.pem"]   # no temp files left


def test_selfsigned_keeps_the_key_unless_asked(tmp_path):
    etc = setup_config(tmp_path)
    key_file = tmp_path / "var" / "tls" / "key.pem"
    assert run(["-c", etc, "tls", "selfsigned"]) == 0
    first_key = key_file.read_bytes()
    assert run(["-c", etc, "tls", "selfsigned", "--hostname", "mx.example.test"]) == 0
    assert key_file.read_bytes() == first_key
    assert san_names(load_cert(tmp_path)) == ["mx.example.test"]
    assert run(["-c", etc, "tls", "selfsigned", "--new-key"]) == 0
    assert key_file.read_bytes() != first_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_csr_creates_a_key_and_prints_the_request(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "tls", "csr", "--hostname", "mx.example.test"]) == 0
    captured = capsys.readouterr()
    written = (tmp_path / "var" / "tls" / "mx.example.test.csr").read_bytes()
    assert captured.out.encode() == written
    csr = x509.load_pem_x509_csr(written)
    assert csr.is_signature_valid and san_names(csr) == ["mx.example.test"]
    key = serialization.load_pem_private_key((tmp_path / "var" / "tls" / "key.pem").read_bytes(), None)
    assert public_pem(csr) == public_pem(key)
    assert "(new)" in captured.err


def test_csr_reuses_the_key_of_the_running_certificate(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "tls", "selfsigned"]) == 0
    out = tmp_path / "request.pem"
    assert run(["-c", etc, "tls", "csr", "--hostname", "mail.example.test", "--out", str(out)]) == 0
    assert public_pem(x509.load_pem_x509_csr(out.read_bytes())) == public_pem(load_cert(tmp_path))
    assert "(existing)" in capsys.readouterr().err


def test_bad_hostname_is_refused_without_writing(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "tls", "selfsigned", "--hostname", "bad_name!.example"]) == 1
    assert run(["-c", etc, "tls", "csr", "--hostname=-leading.example"]) == 1
    assert "bad host name" in capsys.readouterr().err
    assert not (tmp_path / "var" / "tls").exists()


def test_csr_hostname_is_required(tmp_path):
    etc = setup_config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(["-c", etc, "tls", "csr"])
    assert exit_info.value.code == 2


def test_an_unusable_key_is_refused(tmp_path, capsys):
    etc = setup_config(tmp_path)
    tls = tmp_path / "var" / "tls"
    tls.mkdir(parents=True)
    (tls / "key.pem").write_text("not a key\n")
    assert run(["-c", etc, "tls", "selfsigned"]) == 1
    assert "cannot use the key" in capsys.readouterr().err
    assert not (tls / "cert.pem").exists()


def test_ensure_certificate_only_when_missing(tmp_path):
    params = load_config(setup_config(tmp_path)).params
    assert ensure_certificate(params) is not None
    before = (tmp_path / "var" / "tls" / "cert.pem").read_bytes()
    assert ensure_certificate(params) is None
    assert (tmp_path / "var" / "tls" / "cert.pem").read_bytes() == before
