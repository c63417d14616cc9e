"""`python -m workers.qmgr`: the master.cf `qmgr` command (master/cf.py COMMANDS)."""
from workers.qmgr.manager import main

if __name__ == "__main__":
    main()
