"""mailctl aliases: (being built)."""


def register(sub) -> None:
    pass
