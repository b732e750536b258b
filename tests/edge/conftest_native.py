"""Whether the firmware core library is built (tests that need it skip visibly otherwise)."""


def native_built() -> bool:
    from firmware_bridge import native

    try:
        native.core_library()
        return True
    except FileNotFoundError:
        return False
