"""mailctl tls: (being built)."""


def register(sub) -> None:
    pass
