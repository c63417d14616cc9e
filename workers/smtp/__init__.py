"""The smtp service: outgoing SMTP delivery for qmgr (Postfix's smtp(8) shape).

    service.py    the socket protocol (requests from qmgr, per-recipient results), its
                  limits, and main(daemon)
    request.py    a request parsed and checked; Result
    deliver.py    one request: the nexthop's hosts in order, connection reuse, the
                  per-nexthop concurrency limit
    mx.py         DNS: MX records, implicit and null MX, the hosts' addresses, MX loops
    client.py     one SMTP client connection: EHLO, STARTTLS or wrapper-mode TLS, AUTH,
                  MAIL/RCPT/DATA, replies
    passwords.py  the relay hosts' AUTH passwords (smtp_sasl_password_maps, a text file)
    message.py    the message from its queue file in chunks, dot-stuffed for DATA
`python -m workers.smtp` (__main__.py) is master.cf's `smtp` command (master/cf.py COMMANDS).
"""
