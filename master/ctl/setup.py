"""mailctl setup: (being built)."""


def register(sub) -> None:
    pass
