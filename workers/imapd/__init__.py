"""The IMAP4rev1/rev2 service: the session (parser.py, ...) and message structure (mime.py)."""
