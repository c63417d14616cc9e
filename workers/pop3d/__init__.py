"""pop3d: the POP3 service (RFC 1939 with CAPA, UIDL, TOP, STLS, SASL and APOP).

Modules: __main__ (the worker: handle / refuse), session (state machine and command table),
login (AUTHORIZATION: CAPA, STLS, USER/PASS, APOP, AUTH), transaction (STAT ... QUIT),
maildrop (the locked INBOX snapshot), wire (CRLF + byte-stuffed octets, sizes, TOP),
backend (users, passwords, SASL, store and TLS behind one object).
"""
