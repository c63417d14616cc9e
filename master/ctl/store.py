"""mailctl store: (being built)."""


def register(sub) -> None:
    pass
