"""The smtp service: outgoing SMTP delivery for qmgr (Postfix's smtp(8) shape).

    service.py    the socket protocol (requests from qmgr, per-recipient results), its
                  limits, and main(daemon)
    request.py    a request parsed and checked; Result
    deliver.py    one request: the nexthop's hosts in order, connection reuse, the
                  per-nexthop concurrency limit
    mx.py         DNS: MX records, implicit and null MX, the hosts' addresses
    client.py     one SMTP client connection: EHLO, STARTTLS, MAIL/RCPT/DATA, replies
    message.py    the message from its queue file in chunks, dot-stuffed for DATA
`python -m workers.smtp` (__main__.py) is master.cf's `smtp` command (master/cf.py COMMANDS).
"""
