"""``edge-flash robot``: put the runtime, a bundle and the service on a robot computer over SSH.

Steps (each printed; with ``--dry-run`` printed as exact commands and nothing changed):

1. local checks: the bundle loads (every sha256 matches), the recipes for the device exist;
   the wheel is built (``pip wheel . --no-deps``) unless the cache has it for these sources.
2. probe the robot (read-only): user, home, CPU, Jetson/Raspberry Pi identity, Python and
   venv, systemd and root, what is installed. Wrong device, missing Python, no systemd or
   no root for the service are reported here, before anything changes.
3. already installed and intact (same release id, every file's sha256 verified on the robot,
   venv complete, units installed) -> "already up to date", nothing changes.
4. copy the release (wheel, bundle, recipes, rendered unit and udev rule, ``MANIFEST.sha256``,
   ``RELEASE.json``) into ``releases/<id>.partial``; verify every file with ``sha256sum -c`` on
   the robot; only then rename it to ``releases/<id>``. A corrupted copy is deleted and
   reported; nothing else changes.
5. create the release's own venv (Jetson: ``--system-site-packages`` so JetPack's TensorRT is
   used) and install the wheel into it.
6. run the self-test there (``edge-run --self-test``). A failure prints its output and stops:
   ``current`` still points at the old release, which keeps running.
7. switch ``previous`` -> old release and ``current`` -> new release (atomic renames), prune
   older releases, install the systemd unit and udev rule and restart the service (or, with
   ``--no-systemd``, install them under ``<remote-dir>/systemd/`` and ``udev/`` and print the
   manual commands). If the service ran before and does not come back on the new release,
   ``current`` is switched back; one that never ran (no goal configured yet) is reported.

The release id is a hash of what makes the release (the wheel's sources or the given wheel,
every bundle and recipe file, the device and the venv options), so the same inputs always
give the same id: that is what makes a second run a no-op. Layout: docs/ARCHITECTURE.md,
"Robot install layout".
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge import __version__ as edge_version
from edge.bundle import sha256_file
from edge.flash.errors import FlashError
from edge.flash.ssh import TRANSFERS, SshTarget, SshTransport
from edge.flash.wheel import (WheelTags, build_wheel, cached_wheel, default_cache_dir, find_project_root,
                              source_archive, source_hash, wheel_build_argv)

DEVICES = ("jetson", "pi")
"""Robot computers with a recipe in ``build/<device>/``."""
UNIT_NAME = "edge-run.service"
UDEV_NAME = "99-edge-esp32.rules"
DEFAULT_SELF_TEST = "{venv}/bin/edge-run --self-test --bundle {bundle} --device {device}"
"""Run on the robot before switching; placeholders become absolute paths of the new release."""
SELF_TEST_PLACEHOLDERS = ("{venv}", "{bundle}", "{device}", "{release}")
SYSTEMD_UNIT_PATH = "/etc/systemd/system/" + UNIT_NAME
UDEV_RULE_PATH = "/etc/udev/rules.d/" + UDEV_NAME
VENV_STAMP = "EDGE_FLASH_OK"
MANIFEST = "MANIFEST.sha256"
FLASH_FORMAT = 1
"""Bumped when the release layout changes (part of the release id)."""


@dataclass(frozen=True)
class RobotFlashConfig:
    """Everything ``edge-flash robot`` needs; defaults live here only.

    Attributes:
        host: ``USER@HOST`` (or an ssh config alias) of the robot computer.
        device: ``jetson`` (TensorRT from JetPack) or ``pi`` (ONNX Runtime on the CPU).
        bundle: local model bundle folder to install.
        port: SSH port (None = the ssh config's).
        ssh_options: extra ``ssh -o`` options, ``Key=Value``.
        identity_file: SSH private key (None = ssh config / agent).
        ssh_config: ssh config file to use instead of ``~/.ssh/config``.
        remote_dir: install root on the robot; ``~/`` = the SSH user's home.
        dry_run: print every step and command, change nothing (the robot is only probed).
        systemd: install and restart the systemd service; False = install the unit files under
            ``<remote-dir>/systemd/`` and print the manual commands.
        python: Python on the robot that creates the venv (>= 3.10, with the venv module).
        system_site_packages: venv sees the system's packages; None = True on Jetson (JetPack's
            TensorRT is a system package), False on the Pi.
        reuse_site_packages: a Python on the robot whose installed packages the venv reuses
            (added to its path), e.g. an environment with a hand-built OpenCV.
        install_deps: let pip install the wheel's dependencies (False: they must already be
            importable through the system or reused site-packages).
        pip_args: extra arguments for the robot's ``pip install`` (e.g. an index URL).
        self_test: command run on the robot before switching (placeholders {venv}, {bundle},
            {device}, {release}); exit status 0 = healthy.
        self_test_timeout_s: a self-test that builds TensorRT engines takes minutes.
        transfer: ``scp`` or ``rsync``.
        wheel: prebuilt wheel to install instead of building one.
        wheel_cache: where built wheels are cached, keyed by the source hash.
        source_root: edge-jepa checkout the wheel and recipes come from (None = this one).
        recipes: folder with ``edge-run.service`` (+ ``99-edge-esp32.rules``, ``install.sh``)
            to install instead of ``build/<device>/`` (a customised unit).
    """

    host: str
    device: str
    bundle: Path = Path("models/default")
    port: int | None = None
    ssh_options: tuple[str, ...] = ()
    identity_file: str | None = None
    ssh_config: str | None = None
    remote_dir: str = "~/edge-jepa"
    dry_run: bool = False
    systemd: bool = True
    python: str = "python3"
    system_site_packages: bool | None = None
    reuse_site_packages: str | None = None
    install_deps: bool = True
    pip_args: tuple[str, ...] = ()
    self_test: str = DEFAULT_SELF_TEST
    self_test_timeout_s: float = 900.0
    transfer: str = "scp"
    wheel: Path | None = None
    wheel_cache: Path = field(default_factory=default_cache_dir)
    source_root: Path | None = None
    recipes: Path | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise FlashError(f"device {self.device!r} is not one of {', '.join(DEVICES)} "
                             "(use `edge-run --device cpu` on a laptop: it needs no flashing)")
        if self.transfer not in TRANSFERS:
            raise FlashError(f"transfer {self.transfer!r} is not one of {', '.join(TRANSFERS)}")
        if not self.remote_dir or "\n" in self.remote_dir or (self.remote_dir.startswith("~")
                                                              and not (self.remote_dir in ("~",) or
                                                                       self.remote_dir.startswith("~/"))):
            raise FlashError(f"remote_dir {self.remote_dir!r}: give an absolute path or one under ~/")
        if self.remote_dir.rstrip("/") in ("", "/", "~"):
            raise FlashError(f"remote_dir {self.remote_dir!r} would install into / or the home directory "
                             "itself: give a folder of its own, e.g. ~/edge-jepa")
        if not self.python or "\n" in self.python:
            raise FlashError(f"python {self.python!r} is not a command")
        if self.self_test_timeout_s <= 0:
            raise FlashError(f"self_test_timeout_s must be > 0, got {self.self_test_timeout_s}")
        if not self.self_test.strip():
            raise FlashError("self_test is empty: give a command that checks the release on the robot")
        if self.wheel is not None and not self.wheel.name.endswith((".whl", ".tar.gz")):
            raise FlashError(f"wheel {self.wheel}: expected a .whl (or a source .tar.gz) file")

    @property
    def target(self) -> SshTarget:
        return SshTarget(host=self.host, port=self.port, options=self.ssh_options,
                         identity_file=self.identity_file, config_file=self.ssh_config)

    @property
    def use_system_site_packages(self) -> bool:
        return self.device == "jetson" if self.system_site_packages is None else self.system_site_packages


@dataclass(frozen=True)
class RobotInfo:
    """What the read-only probe found on the robot (``key=value`` lines, see :func:`probe_script`)."""

    values: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "RobotInfo":
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        return cls(values)

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def flag(self, key: str) -> bool:
        return self.values.get(key) == "1"


def _files_under(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (relative, sorted), skipping caches."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and "__pycache__" not in rel.parts and not any(s.startswith(".") for s in rel.parts):
            if "\n" in str(rel) or "\\" in str(rel):
                raise FlashError(f"{p}: file names with newlines or backslashes cannot be verified by sha256sum")
            out.append(rel)
    return sorted(out, key=lambda r: r.as_posix())


def check_bundle(path: Path) -> Path:
    """The bundle folder, after checking it loads (schema, every file's sha256).

    Raises :class:`FlashError` naming the path and the command that creates a bundle.
    """
    if not (path / "manifest.json").is_file():
        raise FlashError(f"bundle not found: {path} has no manifest.json. Create one with "
                         f"`edge-export --checkpoint <run dir> --out {path}`, or flash the shipped one "
                         "with --bundle models/default")
    from edge.bundle import BundleError, load_bundle  # lazy: only the robot subcommand needs it

    try:
        load_bundle(path)
    except BundleError as e:
        raise FlashError(f"bundle {path} is not valid, refusing to ship it: {e}") from e
    return path


def recipes_dir(root: Path, device: str) -> Path:
    """``build/<device>/`` with at least the systemd unit in it."""
    folder = root / "build" / device
    if not (folder / UNIT_NAME).is_file():
        raise FlashError(f"no {UNIT_NAME} in {folder}: the {device} install recipe is missing from this "
                         "checkout (it ships in build/jetson/ and build/pi/)")
    return folder


def _custom_recipes(folder: Path) -> Path:
    if not (folder / UNIT_NAME).is_file():
        raise FlashError(f"--recipes {folder} has no {UNIT_NAME}: copy build/pi/ or build/jetson/ and edit it")
    return folder


def release_id(cfg: RobotFlashConfig, code_hash: str, bundle: Path, recipes: Path) -> str:
    """12 hex digits identifying what the release is made of (same inputs -> same id)."""
    h = hashlib.sha256()
    parts = {
        "format": FLASH_FORMAT, "device": cfg.device, "code": code_hash, "python": cfg.python,
        "system_site_packages": cfg.use_system_site_packages, "reuse": cfg.reuse_site_packages,
        "deps": cfg.install_deps, "pip_args": list(cfg.pip_args), "bundle_name": bundle.resolve().name,
        "bundle": {r.as_posix(): sha256_file(bundle / r) for r in _files_under(bundle)},
        "recipes": {r.as_posix(): sha256_file(recipes / r) for r in _files_under(recipes)},
    }
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()[:12]


def shell_dir(remote_dir: str) -> str:
    """``remote_dir`` as a shell word: ``~/x`` -> ``"$HOME"/x``."""
    if remote_dir.startswith("~/"):
        return '"$HOME"/' + shlex.quote(remote_dir[2:].rstrip("/"))
    return shlex.quote(remote_dir.rstrip("/"))


def absolute_remote_dir(remote_dir: str, home: str) -> str:
    if remote_dir.startswith("~/"):
        return home.rstrip("/") + "/" + remote_dir[2:].rstrip("/")
    return remote_dir.rstrip("/")


def probe_script(cfg: RobotFlashConfig, rid: str) -> str:
    """Read-only script printing ``key=value`` facts about the robot and its installation."""
    py = shlex.quote(cfg.python)
    return f"""D={shell_dir(cfg.remote_dir)}
echo "home=$HOME"
echo "user=$(id -un)"
echo "arch=$(uname -m)"
[ -f /etc/nv_tegra_release ] && echo "jetson=1"
[ -r /proc/device-tree/model ] && echo "model=$(tr -d '\\000' < /proc/device-tree/model)"
if command -v {py} >/dev/null 2>&1; then
  {py} -c 'import sys; print("python=%d.%d" % sys.version_info[:2])' 2>/dev/null
  {py} -c 'import venv' >/dev/null 2>&1 && echo "venv=1"
  {py} -c 'import ensurepip' >/dev/null 2>&1 && echo "ensurepip=1"
  echo "pip=$({py} -m pip --version 2>/dev/null | cut -d' ' -f2)"
fi
command -v sha256sum >/dev/null 2>&1 && echo "sha256sum=1"
command -v rsync >/dev/null 2>&1 && echo "rsync=1"
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && echo "systemd=1"
systemctl is-active --quiet {UNIT_NAME} 2>/dev/null && echo "service_active=1"
if [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; then echo "root=1"; fi
p="$D"; while [ ! -e "$p" ]; do p=$(dirname "$p"); done
[ -d "$p" ] && [ -w "$p" ] && echo "writable=1"
echo "current=$(readlink "$D/current" 2>/dev/null)"
echo "previous=$(readlink "$D/previous" 2>/dev/null)"
R="$D/releases/{rid}"
if [ -f "$R/{MANIFEST}" ]; then
  echo "release=1"
  (cd "$R" && sha256sum -c --quiet --strict {MANIFEST} >/dev/null 2>&1) && echo "verified=1"
  [ -f "$R/venv/{VENV_STAMP}" ] && echo "venv_stamp=$(cat "$R/venv/{VENV_STAMP}")"
fi
for f in {SYSTEMD_UNIT_PATH} {UDEV_RULE_PATH} "$D/systemd/{UNIT_NAME}" "$D/udev/{UDEV_NAME}"; do
  [ -f "$f" ] && echo "sha:$f=$(sha256sum < "$f" | cut -d' ' -f1)"
done
exit 0
"""


def check_robot(cfg: RobotFlashConfig, info: RobotInfo, log: Callable[[str], None]) -> None:
    """Refuse a robot the release cannot work on, before anything changes there."""
    host = cfg.host
    model = info.get("model")
    ident = f"uname -m: {info.get('arch') or '?'}; device-tree model: {model or 'none'}"
    is_jetson = info.flag("jetson") or "jetson" in model.lower()
    if cfg.device == "jetson" and not is_jetson:
        raise FlashError(f"--device jetson, but {host} is not a Jetson ({ident}; no /etc/nv_tegra_release). "
                         "For a Raspberry Pi or any other Linux computer use --device pi (ONNX Runtime on the CPU)")
    if cfg.device == "pi" and is_jetson:
        raise FlashError(f"--device pi, but {host} is a Jetson ({ident}): use --device jetson so the "
                         "planner runs on its GPU with TensorRT")
    if cfg.device == "pi" and "raspberry pi" not in model.lower():
        log(f"  note: {host} is not a Raspberry Pi ({ident}); installing the pi recipe "
            "(ONNX Runtime on the CPU), which runs on any Linux computer")
    version = info.get("python")
    if not version:
        raise FlashError(f"`{cfg.python}` was not found on {host}: install it (`sudo apt-get install python3 "
                         "python3-venv`) or pass --python with the robot's Python")
    major, minor = (int(x) for x in version.split("."))
    if (major, minor) < (3, 10):
        raise FlashError(f"{cfg.python} on {host} is Python {version}; edge-jepa needs >= 3.10: install a newer "
                         "one (e.g. `sudo apt-get install python3.11 python3.11-venv`) and pass --python python3.11")
    if not info.flag("venv") or not (info.flag("ensurepip") or pip_can_target(info)):
        raise FlashError(f"{cfg.python} on {host} cannot create virtual environments with pip: "
                         f"`sudo apt-get install python{version}-venv` (or python3-venv) there")
    if not info.flag("sha256sum"):
        raise FlashError(f"`sha256sum` is missing on {host}: `sudo apt-get install coreutils`")
    if cfg.transfer == "rsync" and not info.flag("rsync"):
        raise FlashError(f"--transfer rsync, but rsync is not installed on {host}: "
                         "`sudo apt-get install rsync` there, or use --transfer scp")
    if not info.flag("writable"):
        raise FlashError(f"cannot write {cfg.remote_dir} on {host}: permission denied for {info.get('user')}; "
                         "choose a --remote-dir that user owns (default ~/edge-jepa)")
    if cfg.systemd and not info.flag("systemd"):
        raise FlashError(f"systemd is not running on {host}: re-run with --no-systemd (the unit is then "
                         "installed as a file and the manual start commands are printed)")
    if cfg.systemd and not info.flag("root"):
        raise FlashError(f"installing the service on {host} needs root: give {info.get('user')} passwordless "
                         "sudo, connect as root, or re-run with --no-systemd and install the printed unit by hand")


def pip_can_target(info: RobotInfo) -> bool:
    """Whether the robot Python's own pip can install into another environment
    (``pip --python``, pip >= 22.3): the venv is then created without pip, which saves the
    seconds (tens on a Pi) that ``ensurepip`` takes."""
    try:
        major, minor = (int(x) for x in info.get("pip").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (22, 3)


def render(text: str, values: dict[str, str]) -> str:
    """Replace ``@EDGE_*@`` placeholders (docs/ARCHITECTURE.md, "Robot install layout")."""
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def self_test_command(template: str, release: str, bundle_name: str, device: str) -> str:
    values = {"{venv}": f"{release}/venv", "{bundle}": f"{release}/bundle/{bundle_name}",
              "{device}": device, "{release}": release}
    for key, value in values.items():
        template = template.replace(key, shlex.quote(value))
    return template


@dataclass
class _Steps:
    """Prints steps; runs or (dry run) only prints their commands."""

    transport: SshTransport
    dry_run: bool
    log: Callable[[str], None]

    def title(self, text: str) -> None:
        self.log(f"==> {text}")

    def remote(self, what: str, script: str, timeout_s: float | None = 300.0):
        if self.dry_run:
            self.log(f"  [dry-run] {what}:\n" + _indent(self.transport.describe_run(script)))
            return None
        return self.transport.run(script, timeout_s=timeout_s)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _stage(stage: Path, payload: Path, bundle: Path, recipes: Path, units: dict[str, str],
           release_json: dict) -> None:
    """Lay the release out in ``stage`` and write ``MANIFEST.sha256`` over every file."""
    shutil.copy2(payload, stage / payload.name)
    shutil.copytree(bundle, stage / "bundle" / bundle.resolve().name,
                    ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copytree(recipes, stage / "recipes", ignore=shutil.ignore_patterns("__pycache__", ".*"))
    (stage / "units").mkdir()
    for name, text in units.items():
        (stage / "units" / name).write_text(text, encoding="utf-8")
    (stage / "RELEASE.json").write_text(json.dumps(release_json, indent=2, sort_keys=True) + "\n")
    lines = [f"{sha256_file(stage / rel)}  {rel.as_posix()}" for rel in _files_under(stage)]
    (stage / MANIFEST).write_text("\n".join(lines) + "\n")


def flash_robot(cfg: RobotFlashConfig, transport: SshTransport | None = None,
                log: Callable[[str], None] = print) -> int:
    """Install (or update) the runtime on the robot; returns 0 when it is installed and healthy.

    Raises :class:`FlashError` for every failure (unreachable, refused, wrong device, corrupt
    copy, failed self-test, ...), after which the robot runs what it ran before.
    """
    transport = transport or SshTransport(cfg.target, cfg.transfer)
    steps = _Steps(transport, cfg.dry_run, log)
    # a prebuilt wheel plus own recipes need no source checkout (edge-flash installed from a wheel)
    root = cfg.source_root or (None if cfg.wheel is not None and cfg.recipes is not None else find_project_root())

    steps.title("check the bundle and the recipes")
    bundle = cfg.bundle
    if not bundle.is_absolute() and not (bundle / "manifest.json").is_file() and root is not None \
            and (root / bundle / "manifest.json").is_file():
        bundle = root / bundle  # models/NAME of the checkout when run from another folder
    bundle = check_bundle(bundle)
    bundle_name = bundle.resolve().name
    recipes = _custom_recipes(cfg.recipes) if cfg.recipes is not None else recipes_dir(_checkout(root), cfg.device)
    if cfg.wheel is not None:
        if not cfg.wheel.is_file():
            raise FlashError(f"--wheel {cfg.wheel} does not exist")
        code_hash = sha256_file(cfg.wheel)
    else:
        code_hash = source_hash(_checkout(root))
    rid = release_id(cfg, code_hash, bundle, recipes)
    log(f"  bundle {bundle} ok; recipes {recipes}; release {rid}")

    steps.title(f"probe {cfg.host} (read-only)")
    result = transport.run(probe_script(cfg, rid), timeout_s=60)
    if not result.ok:
        raise FlashError(f"probing {cfg.host} failed (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-300:]}")
    info = RobotInfo.parse(result.stdout)
    check_robot(cfg, info, log)
    home = info.get("home")
    if not home.startswith("/"):
        raise FlashError(f"could not read $HOME on {cfg.host} (got {home!r}); pass an absolute --remote-dir")
    remote = absolute_remote_dir(cfg.remote_dir, home)
    release = f"{remote}/releases/{rid}"
    current_target = info.get("current")
    log(f"  {cfg.host}: user {info.get('user')}, {info.get('arch')}, Python {info.get('python')}, "
        f"{'systemd' if info.flag('systemd') else 'no systemd'}; current release: "
        f"{current_target.rsplit('/', 1)[-1] or 'none'}")

    values = {"EDGE_HOME": remote, "EDGE_USER": info.get("user"), "EDGE_DEVICE": cfg.device,
              "EDGE_BUNDLE": f"{remote}/current/bundle/{bundle_name}", "EDGE_VENV": f"{remote}/current/venv"}
    units = {UNIT_NAME: render((recipes / UNIT_NAME).read_text(encoding="utf-8"), values)}
    if (recipes / UDEV_NAME).is_file():
        units[UDEV_NAME] = render((recipes / UDEV_NAME).read_text(encoding="utf-8"), values)
    unit_dest = ({UNIT_NAME: SYSTEMD_UNIT_PATH, UDEV_NAME: UDEV_RULE_PATH} if cfg.systemd else
                 {UNIT_NAME: f"{remote}/systemd/{UNIT_NAME}", UDEV_NAME: f"{remote}/udev/{UDEV_NAME}"})
    units_installed = all(info.get(f"sha:{unit_dest[name]}") == hashlib.sha256(text.encode()).hexdigest()
                          for name, text in units.items())
    is_current = current_target == f"releases/{rid}"
    release_ok = info.flag("release") and info.flag("verified")
    venv_ok = release_ok and info.get("venv_stamp") == rid  # a re-copied release gets a new venv

    if is_current and release_ok and venv_ok and units_installed:
        log(f"already up to date: {cfg.host} runs release {rid} (every file verified by sha256, venv complete, "
            "service files installed); nothing changed")
        return 0

    if not release_ok:
        payload = _payload(cfg, _checkout(root) if cfg.wheel is None else None, info, steps)
        _upload(cfg, transport, steps, payload, bundle, recipes, units, rid, remote, release, code_hash, log)
    else:
        log(f"  release {rid} is already on the robot and verified: not copying it again")

    if not venv_ok:
        steps.title(f"create the release's venv and install the runtime ({cfg.python}"
                    f"{', --system-site-packages' if cfg.use_system_site_packages else ''})")
        res = steps.remote("install", venv_script(cfg, release, rid, pip_can_target(info)), timeout_s=1800)
        if res is not None and not res.ok:
            raise FlashError(f"installing the runtime into {release}/venv on {cfg.host} failed "
                             f"(exit {res.returncode}); current still points at {current_target or 'nothing'}",
                             details=(res.stdout + res.stderr).strip()[-3000:])

    steps.title("self-test on the robot")
    cmd = self_test_command(cfg.self_test, release, bundle_name, cfg.device)
    res = steps.remote("self-test", self_test_script(release, cmd, remote), timeout_s=cfg.self_test_timeout_s)
    if res is not None:
        output = (res.stdout + res.stderr).strip()
        if not res.ok:
            kept = f"{current_target.rsplit('/', 1)[-1]} keeps running" if current_target else "nothing was running"
            raise FlashError(f"the self-test of release {rid} failed on {cfg.host} (exit {res.returncode}; output "
                             f"above and in {release}/SELFTEST.log): not switching, {kept}", details=output[-4000:])
        log(_indent(output[-1500:]) if output else "  (no output)")

    previous = info.get("previous") if is_current else current_target
    steps.title(f"switch current -> releases/{rid} (previous -> {previous or 'none'})")
    res = steps.remote("switch", switch_script(remote, rid))
    if res is not None and not res.ok:
        raise FlashError(f"switching {remote}/current to release {rid} failed on {cfg.host} (exit {res.returncode}): "
                         f"{(res.stderr or res.stdout).strip()[-300:]}; current still points at "
                         f"{current_target or 'nothing'}")
    if res is not None and res.stdout.strip():
        log(_indent(res.stdout.strip()))
    steps.title("install the service" + (" and restart it" if cfg.systemd else " files (--no-systemd)"))
    res = steps.remote("service", service_script(cfg, release, remote, units), timeout_s=180)
    if res is not None and not res.ok:
        raise FlashError(f"installing the service files on {cfg.host} failed (exit {res.returncode}); release {rid} "
                         "is current but the service was not restarted",
                         details=(res.stdout + res.stderr).strip()[-3000:])
    if res is not None and cfg.systemd:
        _check_service(cfg, transport, RobotInfo.parse(res.stdout), info.flag("service_active"), remote,
                       current_target, rid, log)
    if not cfg.systemd:
        log(manual_service_text(remote, units, bundle_name, cfg.device))
    verb = "would be" if cfg.dry_run else "is"
    log(f"done: release {rid} {verb} current on {cfg.host} (previous: "
        f"{previous.rsplit('/', 1)[-1] if previous else 'none'})")
    return 0


def _wheel_fits(name: str, info: RobotInfo) -> bool:
    major, minor = (int(x) for x in info.get("python").split("."))
    return WheelTags.from_filename(name).runs_on((major, minor), info.get("arch"))


def _local_matches(info: RobotInfo) -> bool:
    return (info.get("arch") == platform.machine()
            and info.get("python") == f"{sys.version_info[0]}.{sys.version_info[1]}")


def _checkout(root: Path | None) -> Path:
    return root if root is not None else find_project_root()


def _payload(cfg: RobotFlashConfig, root: Path | None, info: RobotInfo, steps: _Steps) -> Path | None:
    """The wheel (or, for a robot of another CPU/Python, the source archive) to ship.

    None in a dry run when it would have to be built first (the build command is printed).
    """
    if cfg.wheel is not None:
        if cfg.wheel.name.endswith(".whl") and not _wheel_fits(cfg.wheel.name, info):
            raise FlashError(f"--wheel {cfg.wheel.name} cannot be installed on {cfg.host} (Python "
                             f"{info.get('python')} on {info.get('arch')}): build it for the robot, or leave "
                             "--wheel out and edge-flash ships the sources to be built there")
        return cfg.wheel
    root = _checkout(root)
    steps.title("build the runtime wheel")
    hit = cached_wheel(root, cfg.wheel_cache)
    if hit is None and not _local_matches(info):
        steps.log(f"  {cfg.host} is {info.get('arch')} / Python {info.get('python')}, this machine is "
                  f"{platform.machine()} / Python {sys.version_info[0]}.{sys.version_info[1]}: shipping the "
                  "sources, the robot builds them (needs a C compiler there: build-essential)")
        return None if cfg.dry_run else source_archive(root, cfg.wheel_cache)
    if cfg.dry_run:
        if hit is None:
            argv = wheel_build_argv(root, cfg.wheel_cache / "<source hash>", cfg.wheel_cache / "skbuild")
            steps.log(f"  [dry-run] build: {shlex.join(argv)}")
        else:
            steps.log(f"  wheel up to date (cached for this source): {hit}")
        return hit
    wheel = build_wheel(root, cfg.wheel_cache, log=steps.log)
    if not _wheel_fits(wheel.name, info):
        steps.log(f"  {wheel.name} does not run on {info.get('arch')} / Python {info.get('python')}: "
                  "shipping the sources, the robot builds them (needs a C compiler there: build-essential)")
        return source_archive(root, cfg.wheel_cache)
    return wheel


def _upload(cfg: RobotFlashConfig, transport: SshTransport, steps: _Steps, payload: Path | None, bundle: Path,
            recipes: Path, units: dict[str, str], rid: str, remote: str, release: str, code_hash: str,
            log: Callable[[str], None]) -> None:
    partial = release + ".partial"
    release_json = {
        "release": rid, "device": cfg.device, "bundle": bundle.resolve().name,
        "payload": payload.name if payload else None, "code_sha256": code_hash,
        "venv": {"python": cfg.python, "system_site_packages": cfg.use_system_site_packages,
                 "reuse_site_packages": cfg.reuse_site_packages, "install_deps": cfg.install_deps,
                 "pip_args": list(cfg.pip_args)},
        "created_by": f"edge-flash {edge_version}",
    }
    steps.title(f"copy release {rid} to {cfg.host}:{partial}")
    prepare = f"set -e\nrm -rf {shlex.quote(partial)}\nmkdir -p {shlex.quote(remote + '/releases')}\n"
    with tempfile.TemporaryDirectory(prefix="edge-flash-") as tmp:
        stage = Path(tmp) / rid
        stage.mkdir()
        if payload is not None:
            _stage(stage, payload, bundle, recipes, units, release_json)
            count = sum(1 for _ in _files_under(stage))
            log(f"  {count} files, {sum((stage / r).stat().st_size for r in _files_under(stage)) / 1e6:.1f} MB "
                f"(sha256 of each in {MANIFEST})")
        res = steps.remote("prepare", prepare)
        if res is not None and not res.ok:
            raise FlashError(f"cannot create {remote}/releases on {cfg.host}: {(res.stderr or res.stdout).strip()}")
        if cfg.dry_run:
            log(f"  [dry-run] copy: {transport.describe_upload(stage, partial)}")
        else:
            transport.upload(stage, partial)

    steps.title("verify every copied file by sha256 on the robot")
    res = steps.remote("verify", verify_script(partial, release))
    if res is not None and not res.ok:
        bad = [ln.split(":")[0] for ln in res.stdout.splitlines() if ln.rstrip().endswith("FAILED")
               or "FAILED open or read" in ln]
        raise FlashError(f"the copy to {cfg.host} is corrupt: {', '.join(bad) or 'sha256 check failed'} did not "
                         f"match. The partial copy was deleted and nothing else changed; re-run edge-flash (if it "
                         "keeps failing, check the robot's disk: `df -h`, `dmesg`)",
                         details=(res.stdout + res.stderr).strip()[-2000:])
    if res is not None:
        log("  all files match")


def verify_script(partial: str, release: str) -> str:
    """Check every file against the manifest; keep the copy (rename) only when all match."""
    p, r = shlex.quote(partial), shlex.quote(release)
    return f"""cd {p} || exit 3
if sha256sum -c --quiet --strict {MANIFEST}; then
  cd / && rm -rf {r} && mv {p} {r}
else
  cd / && rm -rf {p}
  exit 1
fi
"""


def venv_script(cfg: RobotFlashConfig, release: str, rid: str, outside_pip: bool) -> str:
    """Fresh venv in the release, the runtime installed into it, then the completion stamp.

    ``outside_pip``: create the venv ``--without-pip`` and install with the robot Python's pip
    (``pip --python venv/bin/python``) instead of bootstrapping pip into every venv.
    """
    r = shlex.quote(release)
    py = shlex.quote(cfg.python)
    site = " --system-site-packages" if cfg.use_system_site_packages else ""
    site += " --without-pip" if outside_pip else ""
    pip = (f"{py} -m pip --python venv/bin/python" if outside_pip else "venv/bin/python -m pip")
    pip += " install -q --disable-pip-version-check"
    extra = "".join(" " + shlex.quote(a) for a in cfg.pip_args)
    payload = '"$PAYLOAD"'
    lines = ["set -e", f"cd {r}", "rm -rf venv", "PAYLOAD=",
             'for f in ./edge_jepa-*.whl ./edge_jepa-*.tar.gz; do [ -f "$f" ] && PAYLOAD=$f; done',
             f'[ -n "$PAYLOAD" ] || {{ echo "no edge_jepa wheel in {release}"; exit 3; }}']
    lines.append(f"{py} -m venv{site} venv")
    if cfg.reuse_site_packages:
        reuse = shlex.quote(cfg.reuse_site_packages)
        lines += [
            "SITE=$(venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')",
            f"{reuse} -c 'import sysconfig; p = sysconfig.get_paths(); "
            "print(chr(10).join(dict.fromkeys([p[\"purelib\"], p[\"platlib\"]])))' > \"$SITE/_edge_flash_reuse.pth\"",
        ]
    lines.append(f"{pip} --no-deps --force-reinstall {payload}{extra}")
    if cfg.install_deps:
        lines.append(f"{pip} {payload}{extra}")
    lines.append(f"echo {rid} > venv/{VENV_STAMP}")
    return "\n".join(lines) + "\n"


def self_test_script(release: str, command: str, remote: str) -> str:
    """Run the self-test in the release, with the engine cache the service uses
    (``<remote-dir>/engines``, as in the unit), so an engine built here is not built again."""
    r = shlex.quote(release)
    return f"""cd {r} || exit 3
export EDGE_JEPA_ENGINE_DIR={shlex.quote(remote + "/engines")}
( {command} ) > SELFTEST.log 2>&1
rc=$?
cat SELFTEST.log
exit $rc
"""


def switch_script(remote: str, rid: str) -> str:
    """previous -> old current, current -> the new release (atomic renames); prune the rest."""
    d = shlex.quote(remote)
    return f"""set -e
cd {d}
old=$(readlink current 2>/dev/null || true)
if [ "$old" != "releases/{rid}" ]; then
  if [ -n "$old" ]; then ln -sfn "$old" .previous.tmp && mv -T .previous.tmp previous; fi
  ln -sfn releases/{rid} .current.tmp && mv -T .current.tmp current
fi
cur=$(readlink current); prev=$(readlink previous 2>/dev/null || true)
for r in releases/*; do
  [ -e "$r" ] || continue
  if [ "$r" != "$cur" ] && [ "$r" != "$prev" ]; then rm -rf "$r"; echo "pruned old $r"; fi
done
"""


def switch_back_script(remote: str, old_target: str) -> str:
    d = shlex.quote(remote)
    return f"""set -e
cd {d}
ln -sfn {shlex.quote(old_target)} .current.tmp && mv -T .current.tmp current
SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
$SUDO systemctl restart {UNIT_NAME} || true
"""


ENV_FILE_TEMPLATE = ("# Per-robot arguments of edge-run.service (read at every start), e.g.\n"
                     "# EDGE_RUN_ARGS=--goal {home}/goals/kitchen.npz\n")


def service_script(cfg: RobotFlashConfig, release: str, remote: str, units: dict[str, str]) -> str:
    """Install the unit and udev rule (system paths with systemd, else under remote), create the
    service's environment file if missing, and (systemd) restart the service; prints
    ``state=`` and ``exit_status=`` of the service for :func:`_check_service`."""
    r = shlex.quote(release)
    env_file = shlex.quote(remote + "/edge-run.env")
    template = shlex.quote(ENV_FILE_TEMPLATE.format(home=remote))
    lines = ["set -e", f"[ -f {env_file} ] || printf '%s' {template} > {env_file}"]
    if not cfg.systemd:
        lines += [f"mkdir -p {shlex.quote(remote + '/systemd')} {shlex.quote(remote + '/udev')}",
                  f"cp {r}/units/{UNIT_NAME} {shlex.quote(remote + '/systemd/' + UNIT_NAME)}"]
        if UDEV_NAME in units:
            lines.append(f"cp {r}/units/{UDEV_NAME} {shlex.quote(remote + '/udev/' + UDEV_NAME)}")
        return "\n".join(lines) + "\n"
    lines += ['SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"',
              f"$SUDO install -m 0644 {r}/units/{UNIT_NAME} {SYSTEMD_UNIT_PATH}"]
    if UDEV_NAME in units:
        lines += [f"$SUDO install -m 0644 {r}/units/{UDEV_NAME} {UDEV_RULE_PATH}",
                  "$SUDO udevadm control --reload-rules && $SUDO udevadm trigger --subsystem-match=tty || true"]
    lines += ["$SUDO systemctl daemon-reload", f"$SUDO systemctl enable --quiet {UNIT_NAME}",
              f"$SUDO systemctl restart {UNIT_NAME} || true", "sleep 3",
              f'echo "state=$(systemctl is-active {UNIT_NAME} || true)"',
              f'echo "exit_status=$(systemctl show -p ExecMainStatus --value {UNIT_NAME} || true)"']
    return "\n".join(lines) + "\n"


def _check_service(cfg: RobotFlashConfig, transport: SshTransport, status: RobotInfo, was_active: bool,
                   remote: str, old_target: str, rid: str, log: Callable[[str], None]) -> None:
    """After the restart: running -> fine. Not running, but it ran before on the old release ->
    the new release broke it: switch current back, restart, raise. Not running before either
    (a fresh robot, no goal configured yet) -> say what to configure; the release stays."""
    state, code = status.get("state") or "unknown", status.get("exit_status") or "?"
    if state == "active":
        log(f"  {UNIT_NAME} is running release {rid}")
        return
    journal = f"`journalctl -u {UNIT_NAME} -n 50` on {cfg.host}"
    if was_active and old_target:
        transport.run(switch_back_script(remote, old_target))
        raise FlashError(f"{UNIT_NAME} ran before but is {state} (exit status {code}) on release {rid}: switched "
                         f"current back to {old_target} and restarted it. See {journal}")
    hint = (f"it needs its per-robot arguments (a goal): set EDGE_RUN_ARGS in {remote}/edge-run.env, then "
            f"`sudo systemctl restart {UNIT_NAME}`" if code == "2" else f"see {journal}")
    log(f"  warning: {UNIT_NAME} is installed and enabled but {state} (exit status {code}; it was not running "
        f"before either): {hint}")


def manual_service_text(remote: str, units: dict[str, str], bundle_name: str, device: str) -> str:
    """What to run on the robot by hand when the unit was installed with --no-systemd."""
    unit = f"{remote}/systemd/{UNIT_NAME}"
    lines = ["  --no-systemd: the service files are installed, not activated. On the robot, as root:",
             f"    sudo cp {unit} {SYSTEMD_UNIT_PATH}"]
    if UDEV_NAME in units:
        lines.append(f"    sudo cp {remote}/udev/{UDEV_NAME} {UDEV_RULE_PATH} && "
                     "sudo udevadm control --reload-rules && sudo udevadm trigger")
    lines += [f"    sudo systemctl daemon-reload && sudo systemctl enable --now {UNIT_NAME}",
              "  or run it in the foreground:",
              f"    {remote}/current/venv/bin/edge-run --device {device} --bundle {remote}/current/bundle/{bundle_name}"]
    return "\n".join(lines)
