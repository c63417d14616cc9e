"""`--update-golden`: rewrite the .ref files of tests/golden instead of comparing with them
(the same as MAILHOUSE_UPDATE_GOLDEN=1, which also works when the whole suite runs)."""


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*/*.ref from what the services answer now")
