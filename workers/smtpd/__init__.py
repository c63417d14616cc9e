"""smtpd: the SMTP server (RFC 5321 with SIZE, PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES,
DSN, STARTTLS and AUTH), one worker process serving many sessions.

Modules: session (state machine and command table), address (MAIL/RCPT arguments),
data (the DATA receiver), sasl (AUTH exchange), relay (relay control and recipient
checks), rbl (DNS blocklists), received (the Received: header), dkim (DKIM signing of
our users' mail), replies (reply codes), backend (queue, users, disk flag, TLS, DNS for
the sessions), __main__ (the worker).
"""
