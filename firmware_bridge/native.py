"""Locate the compiled firmware core (shared library) and the emulator executable.

Search order: ``$EDGE_JEPA_NATIVE_DIR``; ``firmware_bridge/_native/`` inside an installed
wheel (``pip install .``); ``build/native/`` of a source checkout (``cmake -S . -B build/native``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PKG_DIR.parent
_BUILD_HINT = (
    "Build it with `cmake -S . -B build/native && cmake --build build/native` in the "
    "repository root, or install the package with `pip install .` (compiles the native parts)."
)


def _candidate_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("EDGE_JEPA_NATIVE_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(_PKG_DIR / "_native")
    dirs.append(_REPO_ROOT / "build" / "native")
    dirs.append(Path.cwd() / "build" / "native")
    return dirs


def _find(names: list[str], what: str) -> Path:
    searched = []
    for d in _candidate_dirs():
        for name in names:
            for p in (d / name, d / "bin" / name, d / "lib" / name):
                searched.append(str(p))
                if p.is_file():
                    return p
    raise FileNotFoundError(
        f"Could not find the {what} (looked in: {', '.join(searched[:6])} ...). {_BUILD_HINT}"
    )


def core_library() -> Path:
    """Path of the firmware core shared library (``libfwcore.so`` / ``.dylib`` / ``.dll``)."""
    if sys.platform == "darwin":
        names = ["libfwcore.dylib"]
    elif sys.platform == "win32":
        names = ["fwcore.dll"]
    else:
        names = ["libfwcore.so"]
    return _find(names, "firmware core library")


def emulator_executable() -> Path:
    """Path of the ESP32 emulator executable (``fw_emulator``)."""
    return _find(["fw_emulator", "fw_emulator.exe"], "ESP32 emulator executable")
