"""The auth service: the one process that reads the password database and verifies logins.

    service.py    the socket protocol (requests are the checks of workers/_authchecks.py,
                  replies their answers), its limits, and main(daemon)
`python -m workers.auth` (__main__.py) is master.cf's `auth` command (master/cf.py COMMANDS).
"""
