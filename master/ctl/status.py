"""mailctl status: (being built)."""


def register(sub) -> None:
    pass
