"""mailctl users: (being built)."""


def register(sub) -> None:
    pass
