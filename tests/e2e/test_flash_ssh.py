"""``edge-flash robot`` against a real OpenSSH server on loopback.

The module starts Debian's ``sshd`` on 127.0.0.1 (a free port, a throwaway host key, a
throwaway user key as the only authorized key, connecting as the current user) and flashes
into throwaway folders. The robot's venv reuses this interpreter's packages
(``--reuse-site-packages sys.executable --no-deps``) so nothing is downloaded. systemd is
absent here, so the service is installed with ``--no-systemd`` and checked as files.

Skipped (visibly) only when no ``sshd`` binary exists: ``apt-get install openssh-server``
(``.ci/run`` installs it).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.flash import main
from edge.flash.errors import FlashError
from edge.flash.robot import DEFAULT_SELF_TEST, RobotFlashConfig, flash_robot
from edge.flash.ssh import SshTransport
from edge.flash.wheel import build_wheel

REPO = Path(__file__).resolve().parents[2]
SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).is_file()),
                                     None)
pytestmark = pytest.mark.skipif(SSHD is None, reason="OpenSSH server not installed (`apt-get install "
                                                     "openssh-server`; .ci/run does this)")

# Runs in the robot's new venv: loads the shipped bundle with the installed runtime (every
# sha256 checked) and finds the compiled firmware core inside the installed wheel.
SELF_TEST = ("{venv}/bin/python -c 'import sys, edge, firmware_bridge.native as n; "
             "from edge.bundle import load_bundle; b = load_bundle(sys.argv[1]); "
             "print(\"self-test ok\", b.sha256[:12], edge.__file__, n.core_library())' {bundle}")
FAILING_SELF_TEST = ("{venv}/bin/python -c 'import sys; print(\"planner check: cost is NaN for bundle\", "
                     "sys.argv[1]); sys.exit(3)' {bundle}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-flash-test", "-f", str(path)],
                   check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd on 127.0.0.1 and a client config that reaches it with a throwaway key."""
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    _keygen(d / "stranger_key")  # not authorized: for the permission-denied case
    port = _free_port()
    user = getpass.getuser()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'user_key.pub'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowUsers {user}
PidFile {d / 'sshd.pid'}
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(d / "sshd_config")], capture_output=True, text=True)
    assert check.returncode == 0, f"sshd rejected the test config: {check.stderr}"
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.05)
    client = d / "ssh_config"
    client.write_text(f"""Host *
  IdentityFile {d / 'user_key'}
  IdentitiesOnly yes
  UserKnownHostsFile {d / 'known_hosts'}
  StrictHostKeyChecking no
  LogLevel ERROR
""")
    yield {"host": f"{user}@127.0.0.1", "port": port, "config": client, "dir": d}
    proc.terminate()
    proc.wait(timeout=5)
    log.close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The runtime wheel, built once for the module exactly as edge-flash builds it. The tests
    pass it with --wheel: other work in a shared checkout may change the sources between two
    runs, which (correctly) makes a new release; the build cache has its own tests."""
    return build_wheel(REPO, tmp_path_factory.mktemp("wheels"), log=lambda _: None)


def _bundle(folder: Path, note: str) -> Path:
    """A small bundle that passes ``load_bundle`` (schema and every sha256); ``note`` varies it."""
    folder.mkdir(parents=True)
    files = {"sensor.onnx": b"sensor-graph " + note.encode(), "planner.onnx": b"planner-graph",
             "MODEL_CARD.md": f"# test bundle\n{note}\n".encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {
        "schema_version": 1,
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
        "encoders": {"sensor": {"file": "sensor.onnx", "inputs": {}, "outputs": {}}},
        "planner": {"file": "planner.onnx", "N": 4, "H": 3, "J": 1, "A": 2, "E": 8, "temperature": 1.0,
                    "smoothness": 0.1, "std_init": 0.5, "std_min": 0.05, "action_low": -1.0, "action_high": 1.0},
        "normalisation": {}, "sensor_layout": {}, "action_scaling": {"max_wheel_speed": 10.0},
        "training": {"config": {}, "metrics": {}}, "created_by": {"command": "test", "version": "0"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    """A snapshot of the repository's pi recipe (build/pi/): the real unit with its @EDGE_*@
    placeholders, copied so that edits in a shared checkout during the run cannot change it."""
    d = tmp_path_factory.mktemp("recipes") / "pi"
    shutil.copytree(REPO / "build" / "pi", d)
    assert (d / "edge-run.service").is_file(), "build/pi/edge-run.service is missing"
    return d


def _args(sshd, robot: dict, bundle: Path, *extra: str, self_test: str = SELF_TEST) -> list[str]:
    """CLI arguments flashing ``bundle`` into the robot folder of ``robot`` over the test sshd."""
    return ["robot", "--host", sshd["host"], "--port", str(sshd["port"]), "--ssh-config", str(sshd["config"]),
            "--device", "pi", "--bundle", str(bundle), "--remote-dir", str(robot["remote"]), "--no-systemd",
            "--python", sys.executable, "--reuse-site-packages", sys.executable, "--no-deps",
            "--wheel", str(robot["wheel"]), "--self-test", self_test, "--recipes", str(robot["recipes"]),
            *extra]


def _config(sshd, robot: dict, bundle: Path, self_test: str = SELF_TEST) -> RobotFlashConfig:
    """The same as :func:`_args`, as a config for :func:`flash_robot`."""
    return RobotFlashConfig(host=sshd["host"], port=sshd["port"], ssh_config=str(sshd["config"]), device="pi",
                            bundle=bundle, remote_dir=str(robot["remote"]), systemd=False, python=sys.executable,
                            reuse_site_packages=sys.executable, install_deps=False, wheel=robot["wheel"],
                            self_test=self_test, recipes=robot["recipes"])


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, size, mtime and link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             os.readlink(p) if p.is_symlink() else None)
    return out


class CorruptingTransport(SshTransport):
    """The real scp transport, plus one flipped byte in the copied bundle on the robot (a bad
    disk or a truncated copy) before edge-flash verifies it."""

    def upload(self, local_dir, remote_dir):
        super().upload(local_dir, remote_dir)
        res = self.run(f"cd {shlex.quote(remote_dir)} && f=$(ls bundle/*/planner.onnx) && "
                       "printf Z | dd of=\"$f\" bs=1 seek=2 conv=notrunc 2>/dev/null && echo \"$f\"")
        assert res.ok and res.stdout.strip().endswith("planner.onnx"), res


@pytest.fixture(scope="module")
def installed(sshd, wheel, recipes, random_bundle, tmp_path_factory):
    """A fresh install, with the real `edge-run --self-test`, of a bundle written by the
    repository's exporter (tests/e2e/conftest.py) into a throwaway robot folder. Shared by the
    cases below, which must leave it as it is, except the upgrade, which runs last."""
    base = tmp_path_factory.mktemp("robot")
    robot = {"remote": base / "edge-jepa", "wheel": wheel, "recipes": recipes, "base": base,
             "bundle": random_bundle}
    lines: list[str] = []
    rc = flash_robot(_config(sshd, robot, robot["bundle"], self_test=DEFAULT_SELF_TEST), log=lines.append)
    assert rc == 0, "\n".join(lines)
    robot["output"] = "\n".join(lines)
    return robot


def test_fresh_install_lays_out_a_verified_release(installed):
    """A fresh install creates releases/<id> with every file matching MANIFEST.sha256, points
    current at it, installs the wheel into the release's venv (the installed package, not this
    checkout), passes the real `edge-run --self-test` there (bundle verified, ONNX Runtime
    engine, one planner call), and installs the rendered unit under systemd/."""
    remote = installed["remote"]
    current = remote / "current"
    assert current.is_symlink() and os.readlink(current).startswith("releases/")
    assert not (remote / "previous").exists()
    release = current.resolve()
    check = subprocess.run(["sha256sum", "-c", "--strict", "MANIFEST.sha256"], cwd=release,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {ln.split("  ", 1)[1] for ln in (release / "MANIFEST.sha256").read_text().splitlines()}
    assert any(n.startswith("edge_jepa-") and n.endswith(".whl") for n in listed)
    assert {"bundle/random/manifest.json", "bundle/random/MODEL_CARD.md", "RELEASE.json",
            "units/edge-run.service"} <= listed
    probe = subprocess.run([str(release / "venv/bin/python"), "-c",
                            "import edge, firmware_bridge.native as n; print(edge.__file__); print(n.core_library())"],
                           capture_output=True, text=True, cwd="/")
    assert probe.returncode == 0, probe.stderr
    edge_file, core = probe.stdout.split()
    assert edge_file.startswith(str(release / "venv")), edge_file
    assert core.startswith(str(release / "venv")), core
    log = (release / "SELFTEST.log").read_text()
    assert "PASS  bundle" in log and "PASS  planner" in log and "self-test PASSED" in log
    unit = (remote / "systemd" / "edge-run.service").read_text()
    assert unit == (release / "units" / "edge-run.service").read_text()
    assert not re.search(r"@EDGE_[A-Z]+@", unit)
    assert f"ExecStart={remote}/current/venv/bin/edge-run --device pi --bundle {remote}/current/bundle/random" in unit
    assert "EDGE_RUN_ARGS" in (remote / "edge-run.env").read_text()  # where the unit's per-robot arguments go
    assert "--no-systemd" in installed["output"] and "systemctl enable --now edge-run.service" in installed["output"]


def test_second_run_changes_nothing(sshd, installed, capsys):
    """Running the same flash again reports "already up to date", rebuilds nothing and leaves
    every file, link and timestamp on the robot untouched."""
    before = _snapshot(installed["remote"])
    rc = main(_args(sshd, installed, installed["bundle"], self_test=DEFAULT_SELF_TEST))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "already up to date" in out
    assert "building the wheel" not in out
    assert _snapshot(installed["remote"]) == before


def test_dry_run_prints_the_commands_and_changes_nothing(sshd, installed, capsys):
    """--dry-run for a new bundle prints the copy, verify, venv, self-test and switch commands
    (ssh with BatchMode) but changes nothing on the robot."""
    bundle_b = _bundle(installed["base"] / "src" / "bundle-dry", "dry")
    before = _snapshot(installed["remote"])
    rc = main(_args(sshd, installed, bundle_b, "--dry-run"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[dry-run] copy: scp" in out and "sha256sum -c" in out and "-m venv" in out
    assert "BatchMode=yes" in out and "mv -T .current.tmp current" in out
    assert _snapshot(installed["remote"]) == before


def test_corrupted_copy_is_caught_and_nothing_switches(sshd, installed):
    """A byte flipped on the robot after the copy fails the sha256 check: the error names the
    file, the partial copy is removed and current still points at the old release."""
    before_current = os.readlink(installed["remote"] / "current")
    bundle_b = _bundle(installed["base"] / "src" / "bundle-b", "B")
    cfg = _config(sshd, installed, bundle_b)
    with pytest.raises(FlashError, match=r"corrupt: bundle/bundle-b/planner.onnx"):
        flash_robot(cfg, transport=CorruptingTransport(cfg.target), log=lambda _: None)
    assert os.readlink(installed["remote"] / "current") == before_current
    releases = sorted(p.name for p in (installed["remote"] / "releases").iterdir())
    assert releases == [before_current.split("/")[-1]]


def test_failed_self_test_keeps_the_old_release(sshd, installed, capsys):
    """A release whose self-test fails is not switched to: the exit status is non-zero, the
    self-test's own output is shown, and current, the old release and the unit are unchanged."""
    remote = installed["remote"]
    before_current = os.readlink(remote / "current")
    unit_before = (remote / "systemd" / "edge-run.service").read_text()
    bundle_c = _bundle(installed["base"] / "src" / "bundle-c", "C")
    rc = main(_args(sshd, installed, bundle_c, self_test=FAILING_SELF_TEST))
    captured = capsys.readouterr()
    assert rc == 1
    assert "planner check: cost is NaN" in captured.err
    assert "self-test of release" in captured.err and "not switching" in captured.err
    assert os.readlink(remote / "current") == before_current
    assert (remote / before_current / "venv" / "bin" / "python").exists()
    assert (remote / "systemd" / "edge-run.service").read_text() == unit_before


def test_wrong_device_and_refused_key_are_clear_errors(sshd, installed, capsys):
    """--device jetson on a machine that is not a Jetson, and a key the robot does not accept,
    both stop before any change with a one-line error saying what to do."""
    args = _args(sshd, installed, installed["bundle"])
    args[args.index("pi")] = "jetson"
    assert main(args) == 1
    assert "is not a Jetson" in capsys.readouterr().err
    stranger = sshd["dir"] / "ssh_config_stranger"
    stranger.write_text(sshd["config"].read_text().replace("user_key", "stranger_key"))
    args = _args(sshd, installed, installed["bundle"])
    args[args.index(str(sshd["config"]))] = str(stranger)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "permission denied" in err and "ssh-copy-id" in err


def test_no_ssh_server_is_a_clear_error(sshd, installed, capsys):
    """A port where no SSH server listens fails at once (BatchMode, no prompt) with a sentence
    naming the host, the port and what to check."""
    args = _args(sshd, installed, installed["bundle"])
    args[args.index(str(sshd["port"]))] = str(_free_port())
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "refused the SSH connection" in err and "is the SSH server running" in err


def test_upgrade_switches_and_keeps_previous(sshd, installed, capsys):
    """A changed bundle makes a new release (copied with rsync this time, where installed):
    current moves to it, previous points at the old one, whose files and venv are kept (a
    rollback is one symlink away)."""
    remote = installed["remote"]
    old = os.readlink(remote / "current")
    bundle_d = _bundle(installed["base"] / "src" / "bundle-d", "D")
    transfer = "rsync" if shutil.which("rsync") else "scp"
    rc = main(_args(sshd, installed, bundle_d, "--transfer", transfer))
    out = capsys.readouterr().out
    assert rc == 0, out
    new = os.readlink(remote / "current")
    assert new != old and os.readlink(remote / "previous") == old
    assert (remote / new / "bundle" / "bundle-d" / "manifest.json").is_file()
    assert (remote / old / "bundle" / "random" / "manifest.json").is_file()
    assert (remote / old / "venv" / "bin" / "python").exists()
    check = subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=remote / old)
    assert check.returncode == 0
    unit = (remote / "systemd" / "edge-run.service").read_text()
    assert not re.search(r"@EDGE_[A-Z]+@", unit)
