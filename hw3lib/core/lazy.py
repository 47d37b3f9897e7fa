"""Package-level names that load on first use (PEP 562): a package's `__init__` says what it offers
(`__all__`) without importing torch and friends for a caller that needs one small module of it."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__dir__`) for `package`, whose name -> module (relative to it) map is `exports`."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
