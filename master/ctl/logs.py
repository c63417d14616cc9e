"""mailctl logs: (being built)."""


def register(sub) -> None:
    pass
