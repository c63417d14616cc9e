"""`python -m workers.smtp`: the master.cf `smtp` command (master/cf.py COMMANDS)."""
from workers.smtp.service import run

if __name__ == "__main__":
    run()
