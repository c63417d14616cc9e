"""mailctl queue: (being built)."""


def register(sub) -> None:
    pass
