"""Build the runtime's wheel locally, cached by a hash of its sources.

``pip wheel . --no-deps`` runs scikit-build-core, which compiles the firmware core and the
emulator into the wheel; that takes seconds to minutes, so wheels are kept in a cache keyed by
the sha256 of every source file that goes into them (a second flash of unchanged sources
does not rebuild). When the robot's CPU or Python differs from this machine's (an x86 laptop
flashing an ARM Jetson), a compiled wheel cannot run there: :func:`source_archive` packs the
same sources and the robot builds them (``pip install edge_jepa-<version>-src.tar.gz``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.flash.errors import FlashError

SOURCE_ITEMS = ("pyproject.toml", "CMakeLists.txt", "README.md", "edge", "firmware_bridge", "training")
"""What the wheel is built from (files and folders at the project root)."""
_SKIP_DIRS = {"__pycache__", "_native", ".pio", ".pytest_cache", ".hypothesis"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".o")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-jepa/wheels`` (``~/.cache/edge-jepa/wheels``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-jepa" / "wheels"


def find_project_root(start: Path | None = None) -> Path:
    """The edge-jepa source checkout this module runs from (or, failing that, ``start``/cwd).

    Raises :class:`FlashError` when neither is a checkout (e.g. running from an installed wheel).
    """
    candidates = [Path(__file__).resolve().parents[2]]
    candidates.append((start or Path.cwd()).resolve())
    for root in candidates:
        pyproject = root / "pyproject.toml"
        if pyproject.is_file() and 'name = "edge-jepa"' in pyproject.read_text(encoding="utf-8"):
            return root
    raise FlashError("edge-flash builds the runtime from the edge-jepa source checkout, and none was found "
                     f"(looked in {', '.join(str(c) for c in candidates)}): run it from the repository, "
                     "or pass a prebuilt wheel with --wheel PATH")


def project_version(root: Path) -> str:
    """``version`` from ``pyproject.toml``."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    if not match:
        raise FlashError(f"no version = \"...\" line in {root / 'pyproject.toml'}")
    return match.group(1)


def source_files(root: Path) -> list[Path]:
    """Every file the wheel is built from, sorted, relative to ``root``."""
    out: list[Path] = []
    for item in SOURCE_ITEMS:
        path = root / item
        if path.is_file():
            out.append(Path(item))
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
                for name in filenames:
                    if not name.endswith(_SKIP_SUFFIXES) and not name.startswith("."):
                        out.append((Path(dirpath) / name).relative_to(root))
    return sorted(out, key=lambda p: p.as_posix())


def source_hash(root: Path) -> str:
    """sha256 over the relative path and content of every source file (hex)."""
    h = hashlib.sha256()
    for rel in source_files(root):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def wheel_build_argv(root: Path, out_dir: Path, build_dir: Path, python: str = sys.executable) -> list[str]:
    """The ``pip wheel`` command :func:`build_wheel` runs (no build isolation when this Python
    already has scikit-build-core: faster, and no download)."""
    argv = [python, "-m", "pip", "wheel", str(root), "--no-deps", "-q", "--disable-pip-version-check",
            "-w", str(out_dir), f"--config-settings=build-dir={build_dir}/{{wheel_tag}}"]
    if python == sys.executable and importlib.util.find_spec("scikit_build_core") is not None:
        argv.append("--no-build-isolation")
    return argv


def cached_wheel(root: Path, cache_dir: Path, src_hash: str | None = None) -> Path | None:
    """The cached wheel for the current sources, or None."""
    entry = cache_dir / (src_hash or source_hash(root))[:20]
    wheels = sorted(entry.glob("*.whl")) if (entry / "COMPLETE").is_file() else []
    return wheels[0] if wheels else None


def build_wheel(root: Path, cache_dir: Path, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                log: Callable[[str], None] = print) -> Path:
    """Return the wheel for ``root``'s current sources, building it only when not cached.

    Raises :class:`FlashError` with pip's last output lines when the build fails.
    """
    src_hash = source_hash(root)
    hit = cached_wheel(root, cache_dir, src_hash)
    if hit is not None:
        log(f"  wheel up to date (cached for this source): {hit}")
        return hit
    entry = cache_dir / src_hash[:20]
    cache_dir.mkdir(parents=True, exist_ok=True)
    log("  building the wheel (pip wheel . --no-deps: compiles the firmware core; first time only)")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        out = Path(tmp) / "out"
        argv = wheel_build_argv(root, out, cache_dir / "skbuild")
        proc = runner(argv, capture_output=True, text=True, cwd=root)
        wheels = sorted(out.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
            raise FlashError(f"building the wheel failed ({shlex.join(argv)} exited {proc.returncode}); "
                             "fix the build error above (is cmake and a C compiler installed?)", details=tail)
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        final = entry / wheels[0].name
        shutil.move(str(wheels[0]), final)
        (entry / "SOURCE_SHA256").write_text(src_hash + "\n")
        (entry / "COMPLETE").write_text("")
    log(f"  built {final}")
    return final


def source_archive(root: Path, cache_dir: Path) -> Path:
    """A ``.tar.gz`` of the wheel's sources that ``pip install`` builds on the robot (cached)."""
    src_hash = source_hash(root)
    name = f"edge_jepa-{project_version(root)}-src"
    entry = cache_dir / src_hash[:20]
    path = entry / f"{name}.tar.gz"
    if path.is_file():
        return path
    entry.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for rel in source_files(root):
            tar.add(root / rel, arcname=f"{name}/{rel.as_posix()}", recursive=False)
    tmp.rename(path)
    return path


@dataclass(frozen=True)
class WheelTags:
    """The compatibility tags in a wheel's file name (PEP 427)."""

    python: str
    abi: str
    platform: str

    @classmethod
    def from_filename(cls, name: str) -> "WheelTags":
        parts = name[: -len(".whl")].split("-") if name.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise FlashError(f"{name!r} is not a wheel file name (name-version-python-abi-platform.whl)")
        return cls(python=parts[-3], abi=parts[-2], platform=parts[-1])

    def runs_on(self, python_version: tuple[int, int], machine: str) -> bool:
        """Whether a Python ``python_version`` on a ``machine`` (``uname -m``) can install it."""
        cp = f"cp{python_version[0]}{python_version[1]}"
        pythons = self.python.split(".")
        py_ok = any(p in (cp, f"py{python_version[0]}", f"py{python_version[0]}{python_version[1]}")
                    or (self.abi == "abi3" and p.startswith("cp") and int(p[3:] or 0) <= python_version[1])
                    for p in pythons)
        aliases = {"aarch64": ("aarch64", "arm64"), "arm64": ("aarch64", "arm64"),
                   "x86_64": ("x86_64", "amd64"), "armv7l": ("armv7l",)}.get(machine, (machine,))
        plat_ok = self.platform == "any" or any(
            tag.endswith(tuple("_" + a for a in aliases)) for tag in self.platform.split("."))
        return py_ok and plat_ok
