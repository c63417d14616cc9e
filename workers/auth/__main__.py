"""`python -m workers.auth`: the master.cf `auth` command (master/cf.py COMMANDS)."""
from workers.auth.service import run

if __name__ == "__main__":
    run()
