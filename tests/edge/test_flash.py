"""``edge-flash robot`` without a network: the step order and scripts with systemd (which the
loopback SSH tests cannot have), rollback on a failed restart, idempotency and dry-run
decisions from the probe, the robot checks, the wheel cache and wheel/platform matching, the
ssh error messages and the CLI's one-line errors. The real SSH path: tests/e2e/test_flash_ssh.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from edge.flash import main
from edge.flash import robot as fr
from edge.flash.errors import FlashError
from edge.flash.ssh import RemoteResult, SshTarget, SshTransport, explain_ssh_failure
from edge.flash.wheel import WheelTags, build_wheel, source_hash

UNIT = "[Service]\nExecStart=@EDGE_VENV@/bin/edge-run --device @EDGE_DEVICE@ --bundle @EDGE_BUNDLE@\nUser=@EDGE_USER@\n"


def _bundle(folder: Path, note: str = "A") -> Path:
    """A small bundle that passes ``load_bundle`` (schema and every sha256)."""
    folder.mkdir(parents=True)
    files = {"sensor.onnx": b"sensor " + note.encode(), "planner.onnx": b"planner", "MODEL_CARD.md": b"# card\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {
        "schema_version": 1, "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
        "encoders": {"sensor": {"file": "sensor.onnx", "inputs": {}, "outputs": {}}},
        "planner": {"file": "planner.onnx", "N": 4, "H": 3, "J": 1, "A": 2, "E": 8, "temperature": 1.0,
                    "smoothness": 0.1, "std_init": 0.5, "std_min": 0.05, "action_low": -1.0, "action_high": 1.0},
        "normalisation": {}, "sensor_layout": {}, "action_scaling": {"max_wheel_speed": 10.0},
        "training": {"config": {}, "metrics": {}}, "created_by": {"command": "test", "version": "0"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture()
def setup(tmp_path):
    """A bundle, recipes with placeholders and a (pure-Python-tagged) wheel file."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "edge-run.service").write_text(UNIT)
    (recipes / "99-edge-esp32.rules").write_text('SUBSYSTEM=="tty", SYMLINK+="edge-esp32"\n')
    wheel = tmp_path / "edge_jepa-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK fake wheel")
    return {"bundle": _bundle(tmp_path / "models" / "mini"), "recipes": recipes, "wheel": wheel, "tmp": tmp_path}


def _cfg(setup, **kw) -> fr.RobotFlashConfig:
    base = dict(host="nvidia@jetson", device="jetson", bundle=setup["bundle"], recipes=setup["recipes"],
                wheel=setup["wheel"], remote_dir="~/edge-jepa")
    base.update(kw)
    return fr.RobotFlashConfig(**base)


JETSON_PROBE = {"home": "/home/nvidia", "user": "nvidia", "arch": "aarch64", "jetson": "1",
                "model": "NVIDIA Jetson Orin Nano Developer Kit", "python": "3.10", "venv": "1", "ensurepip": "1",
                "pip": "22.0.2", "sha256sum": "1", "systemd": "1", "root": "1", "writable": "1",
                "current": "releases/0123456789ab", "previous": ""}


class FakeTransport(SshTransport):
    """Answers the probe from a dict and every other script from ``results`` (by step
    keyword); records each script and each upload (with the staged files' MANIFEST)."""

    def __init__(self, probe: dict[str, str], results: dict[str, RemoteResult] | None = None) -> None:
        super().__init__(SshTarget("nvidia@jetson"), runner=self._refuse)
        self.probe = probe
        self.results = results or {}
        self.scripts: list[tuple[str, str]] = []
        self.uploads: list[tuple[dict[str, str], str]] = []

    @staticmethod
    def _refuse(*args, **kwargs):
        raise AssertionError("the fake transport must not start processes")

    @staticmethod
    def kind(script: str) -> str:
        for key, marker in (("probe", 'echo "home=$HOME"'), ("verify", "sha256sum -c --quiet --strict MANIFEST"),
                            ("venv", " -m venv"), ("selftest", "SELFTEST.log"), ("switch", "ln -sfn releases/"), ("service", "units/edge-run.service"),
                            ("prepare", "mkdir -p")):
            if marker in script:
                return key
        return "other"

    def run(self, script: str, timeout_s=None) -> RemoteResult:
        kind = self.kind(script)
        self.scripts.append((kind, script))
        if kind == "probe":
            return RemoteResult(0, "".join(f"{k}={v}\n" for k, v in self.probe.items()), "")
        return self.results.get(kind, RemoteResult(0, "", ""))

    def upload(self, local_dir: Path, remote_dir: str) -> None:
        manifest = (local_dir / fr.MANIFEST).read_text().splitlines()
        entries = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in manifest}
        for rel, digest in entries.items():
            assert hashlib.sha256((local_dir / rel).read_bytes()).hexdigest() == digest
        self.uploads.append((entries, remote_dir))


def test_systemd_flash_runs_every_step_in_order(setup):
    """With systemd and root: probe, prepare, copy, verify, venv (Jetson: system site packages
    for TensorRT), self-test, switch, then install unit + udev rule and restart the service; the
    staged manifest covers wheel, bundle, recipes and rendered units with correct hashes."""
    t = FakeTransport(JETSON_PROBE)
    assert fr.flash_robot(_cfg(setup), transport=t, log=lambda _: None) == 0
    assert [k for k, _ in t.scripts] == ["probe", "prepare", "verify", "venv", "selftest", "switch", "service"]
    (entries, remote_dir), = t.uploads
    rid = remote_dir.rsplit("/", 1)[1].removesuffix(".partial")
    assert remote_dir == f"/home/nvidia/edge-jepa/releases/{rid}.partial"
    assert {"edge_jepa-0.1.0-py3-none-any.whl", "bundle/mini/manifest.json", "recipes/edge-run.service",
            "units/edge-run.service", "units/99-edge-esp32.rules", "RELEASE.json"} <= set(entries)
    scripts = dict(t.scripts)
    assert "--system-site-packages" in scripts["venv"]
    assert (f"( /home/nvidia/edge-jepa/releases/{rid}/venv/bin/edge-run --self-test --bundle "
            f"/home/nvidia/edge-jepa/releases/{rid}/bundle/mini --device jetson )") in scripts["selftest"]
    service = scripts["service"]
    assert "install -m 0644" in service and fr.SYSTEMD_UNIT_PATH in service and fr.UDEV_RULE_PATH in service
    assert service.index("daemon-reload") < service.index("systemctl restart edge-run.service")


def test_units_are_rendered_with_the_robot_paths(setup):
    """The installed unit has every placeholder replaced by the robot's absolute paths (the
    current symlink, so it never needs rewriting on upgrade)."""
    t = FakeTransport(JETSON_PROBE)
    staged: dict[str, str] = {}

    def capture(local_dir: Path, remote_dir: str) -> None:
        staged["unit"] = (local_dir / "units" / "edge-run.service").read_text()

    t.upload = capture
    fr.flash_robot(_cfg(setup), transport=t, log=lambda _: None)
    assert staged["unit"] == ("[Service]\nExecStart=/home/nvidia/edge-jepa/current/venv/bin/edge-run --device jetson "
                              "--bundle /home/nvidia/edge-jepa/current/bundle/mini\nUser=nvidia\n")


def test_failed_self_test_stops_before_switching(setup):
    """A failing self-test raises with its output as details, and neither the switch nor the
    service step runs."""
    t = FakeTransport(JETSON_PROBE, {"selftest": RemoteResult(1, "engine build failed: out of memory\n", "")})
    with pytest.raises(FlashError, match=r"self-test of release .* failed .*not switching, 0123456789ab keeps running") \
            as exc:
        fr.flash_robot(_cfg(setup), transport=t, log=lambda _: None)
    assert "engine build failed: out of memory" in exc.value.details
    assert [k for k, _ in t.scripts][-1] == "selftest"


def test_failed_restart_switches_back(setup):
    """If the service ran before and is not running after the switch, current is pointed back
    at the old release (and the service restarted on it) before the error."""
    t = FakeTransport({**JETSON_PROBE, "service_active": "1"},
                      {"service": RemoteResult(0, "state=failed\nexit_status=1\n", "")})
    with pytest.raises(FlashError, match=r"ran before but is failed \(exit status 1\).*switched current back to "
                                         r"releases/0123456789ab"):
        fr.flash_robot(_cfg(setup), transport=t, log=lambda _: None)
    last = t.scripts[-1][1]
    assert "ln -sfn releases/0123456789ab .current.tmp" in last and "systemctl restart" in last


def test_unconfigured_service_is_reported_not_rolled_back(setup):
    """A service that was not running before (fresh robot) and exits 2 (no goal configured)
    keeps the new release current and tells the user where the goal goes."""
    lines: list[str] = []
    t = FakeTransport(JETSON_PROBE, {"service": RemoteResult(0, "state=failed\nexit_status=2\n", "")})
    assert fr.flash_robot(_cfg(setup), transport=t, log=lines.append) == 0
    assert [k for k, _ in t.scripts][-1] == "service"
    assert any("EDGE_RUN_ARGS in /home/nvidia/edge-jepa/edge-run.env" in ln for ln in lines)
    assert "edge-run.env" in dict(t.scripts)["service"]


def test_up_to_date_robot_runs_only_the_probe(setup):
    """When the probe reports this release current, verified, its venv complete and the units
    installed with the same content, nothing but the probe runs."""
    cfg = _cfg(setup)
    rid = fr.release_id(cfg, fr.sha256_file(setup["wheel"]), setup["bundle"], setup["recipes"])
    values = {"EDGE_HOME": "/home/nvidia/edge-jepa", "EDGE_USER": "nvidia", "EDGE_DEVICE": "jetson",
              "EDGE_BUNDLE": "/home/nvidia/edge-jepa/current/bundle/mini",
              "EDGE_VENV": "/home/nvidia/edge-jepa/current/venv"}
    sha = {name: hashlib.sha256(fr.render((setup["recipes"] / name).read_text(), values).encode()).hexdigest()
           for name in ("edge-run.service", "99-edge-esp32.rules")}
    probe = dict(JETSON_PROBE, current=f"releases/{rid}", release="1", verified="1", venv_stamp=rid)
    probe[f"sha:{fr.SYSTEMD_UNIT_PATH}"] = sha["edge-run.service"]
    probe[f"sha:{fr.UDEV_RULE_PATH}"] = sha["99-edge-esp32.rules"]
    lines: list[str] = []
    t = FakeTransport(probe)
    assert fr.flash_robot(cfg, transport=t, log=lines.append) == 0
    assert [k for k, _ in t.scripts] == ["probe"] and not t.uploads
    assert any("already up to date" in ln for ln in lines)
    # a changed unit on the robot is not "up to date": the service step runs again
    probe[f"sha:{fr.SYSTEMD_UNIT_PATH}"] = "0" * 64
    t = FakeTransport(probe)
    fr.flash_robot(cfg, transport=t, log=lambda _: None)
    assert [k for k, _ in t.scripts] == ["probe", "selftest", "switch", "service"]


def test_dry_run_only_probes(setup):
    """--dry-run runs the read-only probe and prints every other step as a runnable ssh
    command (BatchMode, here-document), copying nothing."""
    lines: list[str] = []
    t = FakeTransport(JETSON_PROBE)
    assert fr.flash_robot(_cfg(setup, dry_run=True), transport=t, log=lines.append) == 0
    assert [k for k, _ in t.scripts] == ["probe"] and not t.uploads
    text = "\n".join(lines)
    assert "ssh -o BatchMode=yes" in text and "sh -s <<'EDGE_FLASH_EOF'" in text
    for marker in ("[dry-run] copy: scp", "sha256sum -c", " -m venv", "--self-test", "mv -T .current.tmp current",
                   "systemctl restart edge-run.service"):
        assert marker in text, marker


@pytest.mark.parametrize("device, change, message", [
    ("jetson", {"jetson": "", "model": "Raspberry Pi 5 Model B Rev 1.0"}, "is not a Jetson"),
    ("pi", {}, "is a Jetson"),
    ("jetson", {"python": "3.8"}, "needs >= 3.10"),
    ("jetson", {"python": ""}, "was not found"),
    ("jetson", {"ensurepip": "", "pip": ""}, "python3.10-venv"),
    ("jetson", {"systemd": ""}, "--no-systemd"),
    ("jetson", {"root": ""}, "passwordless sudo"),
    ("jetson", {"writable": ""}, "permission denied"),
])
def test_robot_checks_refuse_before_any_change(setup, device, change, message):
    """Wrong device, missing/old Python or venv, no systemd, no root and an unwritable target
    are refused after the probe, before anything is copied or changed."""
    t = FakeTransport({**JETSON_PROBE, **change})
    with pytest.raises(FlashError, match=message):
        fr.flash_robot(_cfg(setup, device=device), transport=t, log=lambda _: None)
    assert [k for k, _ in t.scripts] == ["probe"] and not t.uploads


def test_pi_recipe_on_another_linux_computer_is_a_note(setup):
    """--device pi on a Linux computer that is not a Raspberry Pi proceeds with a note (the pi
    recipe is ONNX Runtime on the CPU); the venv does not use system site packages."""
    probe = {**JETSON_PROBE, "jetson": "", "model": "", "arch": "x86_64", "systemd": ""}
    lines: list[str] = []
    t = FakeTransport(probe)
    fr.flash_robot(_cfg(setup, device="pi", systemd=False), transport=t, log=lines.append)
    assert any("is not a Raspberry Pi" in ln for ln in lines)
    assert "--system-site-packages" not in dict(t.scripts)["venv"]


def test_robot_of_another_cpu_gets_the_sources(setup, tmp_path):
    """A robot whose CPU differs from this machine's gets a source archive to build (not this
    machine's compiled wheel), and the venv step installs whatever payload was shipped."""
    root = tmp_path / "proj"
    (root / "edge").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "edge-jepa"\nversion = "9.9.9"\n')
    (root / "edge" / "__init__.py").write_text("")
    (root / "build" / "jetson").mkdir(parents=True)
    (root / "build" / "jetson" / "edge-run.service").write_text(UNIT)
    probe = {**JETSON_PROBE, "arch": "riscv64"}
    t = FakeTransport(probe)
    cfg = _cfg(setup, wheel=None, recipes=None, source_root=root, wheel_cache=tmp_path / "cache")
    fr.flash_robot(cfg, transport=t, log=lambda _: None)
    (entries, _), = t.uploads
    assert "edge_jepa-9.9.9-src.tar.gz" in entries and not any(n.endswith(".whl") for n in entries)
    assert "edge_jepa-*.tar.gz" in dict(t.scripts)["venv"]


def test_missing_and_tampered_bundles(tmp_path):
    """A missing bundle names the path and the command that makes one; a bundle whose file
    does not match its manifest is refused before anything is shipped."""
    with pytest.raises(FlashError, match=r"bundle not found: .*nope has no manifest.json.*edge-export"):
        fr.check_bundle(tmp_path / "nope")
    bundle = _bundle(tmp_path / "b")
    (bundle / "planner.onnx").write_bytes(b"tampered")
    with pytest.raises(FlashError, match=r"not valid, refusing to ship it.*planner.onnx"):
        fr.check_bundle(bundle)


def test_release_id_depends_on_every_input(setup):
    """Same inputs give the same release id; a changed bundle file, recipe, device or venv
    option gives another."""
    cfg = _cfg(setup)
    rid = fr.release_id(cfg, "c0de", setup["bundle"], setup["recipes"])
    assert rid == fr.release_id(_cfg(setup), "c0de", setup["bundle"], setup["recipes"])
    assert rid != fr.release_id(cfg, "c0df", setup["bundle"], setup["recipes"])
    assert rid != fr.release_id(_cfg(setup, device="pi"), "c0de", setup["bundle"], setup["recipes"])
    assert rid != fr.release_id(_cfg(setup, system_site_packages=False), "c0de", setup["bundle"], setup["recipes"])
    (setup["recipes"] / "99-edge-esp32.rules").write_text("changed\n")
    assert rid != fr.release_id(cfg, "c0de", setup["bundle"], setup["recipes"])


def test_config_validation_names_the_field():
    """Bad settings fail at construction with the field and the fix in the message."""
    with pytest.raises(FlashError, match="device 'cpu'"):
        fr.RobotFlashConfig(host="a@b", device="cpu")
    with pytest.raises(FlashError, match="remote_dir '~bob/x'"):
        fr.RobotFlashConfig(host="a@b", device="pi", remote_dir="~bob/x")
    with pytest.raises(FlashError, match="folder of its own"):
        fr.RobotFlashConfig(host="a@b", device="pi", remote_dir="~/")
    with pytest.raises(FlashError, match="USER@HOST"):
        SshTarget("-oProxyCommand=evil")
    with pytest.raises(FlashError, match="Key=Value"):
        SshTarget("a@b", options=("StrictHostKeyChecking",))


def test_ssh_argv_forces_batch_mode_and_spells_ports():
    """BatchMode=yes comes first (ssh keeps the first value of an option, so no user option
    can turn password prompts back on); ssh uses -p, scp -P."""
    target = SshTarget("pi@robot", port=2222, options=("BatchMode=no",), identity_file="/k", config_file="/c")
    ssh = target.ssh_argv()
    assert ssh[:3] == ["ssh", "-o", "BatchMode=yes"] and ssh.index("BatchMode=yes") < ssh.index("BatchMode=no")
    assert ssh[ssh.index("-p") + 1] == "2222" and "-P" not in ssh
    scp = target.scp_argv()
    assert scp[scp.index("-P") + 1] == "2222" and ["-F", "/c"] == scp[scp.index("-F"):scp.index("-F") + 2]


@pytest.mark.parametrize("stderr, expected", [
    ("pi@robot: Permission denied (publickey).", "ssh-copy-id pi@robot"),
    ("ssh: Could not resolve hostname robot: Name or service not known", "cannot resolve"),
    ("ssh: connect to host robot port 22: Connection refused", "refused the SSH connection"),
    ("ssh: connect to host robot port 22: Connection timed out", "cannot reach"),
    ("Host key verification failed.", "connect once by hand"),
])
def test_ssh_failures_are_explained(stderr, expected):
    """ssh's own errors become a sentence with the next step."""
    assert expected in explain_ssh_failure(SshTarget("pi@robot"), stderr)


def test_ssh_status_255_raises_and_script_goes_on_stdin():
    """The transport runs `ssh ... HOST sh -s` with the script on stdin, and maps ssh's exit
    status 255 to an explained error while a script's own failure is returned."""
    calls = []

    def runner(argv, **kw):
        calls.append((argv, kw["input"]))
        code = 255 if "fail-ssh" in kw["input"] else 7
        return subprocess.CompletedProcess(argv, code, "", "ssh: connect to host x port 22: Connection refused")

    t = SshTransport(SshTarget("pi@robot"), runner=runner)
    assert t.run("exit 7").returncode == 7
    assert calls[0][0][-3:] == ["pi@robot", "sh", "-s"] and calls[0][1] == "exit 7"
    with pytest.raises(FlashError, match="refused"):
        t.run("fail-ssh")


def test_wheel_tags_match_the_robot():
    """A wheel fits a robot only with its CPU and Python: x86_64 cp311 does not fit an aarch64
    Jetson or Python 3.10; py3-none-any fits everything."""
    tags = WheelTags.from_filename("edge_jepa-0.1.0-cp311-cp311-linux_x86_64.whl")
    assert tags.runs_on((3, 11), "x86_64")
    assert not tags.runs_on((3, 11), "aarch64")
    assert not tags.runs_on((3, 10), "x86_64")
    assert WheelTags.from_filename("edge_jepa-0.1.0-py3-none-any.whl").runs_on((3, 10), "aarch64")
    many = WheelTags.from_filename("x-1-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl")
    assert many.runs_on((3, 10), "aarch64") and not many.runs_on((3, 10), "x86_64")
    with pytest.raises(FlashError):
        WheelTags.from_filename("not-a-wheel.zip")


def test_wheel_is_built_once_per_source(tmp_path):
    """build_wheel runs `pip wheel <root> --no-deps` only when the cache lacks a wheel for the
    current sources: a second call reuses it, an edited source file builds again."""
    root = tmp_path / "proj"
    (root / "edge").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "edge-jepa"\nversion = "1.0"\n')
    (root / "edge" / "a.py").write_text("A = 1\n")
    (root / "edge" / "__pycache__").mkdir()
    (root / "edge" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"ignored")
    builds = []

    def runner(argv, **kw):
        builds.append(argv)
        out = Path(argv[argv.index("-w") + 1])
        out.mkdir(parents=True)
        (out / f"edge_jepa-1.0-py3-none-any.whl").write_bytes(str(len(builds)).encode())
        return subprocess.CompletedProcess(argv, 0, "", "")

    cache = tmp_path / "cache"
    first = build_wheel(root, cache, runner=runner, log=lambda _: None)
    assert builds[0][1:6] == ["-m", "pip", "wheel", str(root), "--no-deps"]
    hash_before = source_hash(root)
    (root / "edge" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"changed bytecode")
    assert source_hash(root) == hash_before
    assert build_wheel(root, cache, runner=runner, log=lambda _: None) == first and len(builds) == 1
    (root / "edge" / "a.py").write_text("A = 2\n")
    second = build_wheel(root, cache, runner=runner, log=lambda _: None)
    assert len(builds) == 2 and second != first and second.read_bytes() == b"2"


def test_failed_wheel_build_shows_pip_output(tmp_path):
    """A failing build raises with pip's last lines as details and caches nothing."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "edge-jepa"\nversion = "1.0"\n')

    def runner(argv, **kw):
        return subprocess.CompletedProcess(argv, 1, "", "CMake Error: no C compiler\n")

    with pytest.raises(FlashError, match="building the wheel failed") as exc:
        build_wheel(root, tmp_path / "cache", runner=runner, log=lambda _: None)
    assert "no C compiler" in exc.value.details
    assert not list((tmp_path / "cache").glob("*/*.whl"))


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    """A missing bundle exits 1 with one `edge-flash: error:` line (no traceback) before any
    connection; an unknown device is an argparse error (exit 2)."""
    rc = main(["robot", "--host", "pi@robot.invalid", "--device", "pi", "--bundle", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("edge-flash: error: bundle not found")
    with pytest.raises(SystemExit) as exc:
        main(["robot", "--host", "pi@robot", "--device", "cpu"])
    assert exc.value.code == 2


def test_damaged_release_is_copied_again_with_a_new_venv(setup):
    """A release folder on the robot whose files no longer verify (a damaged SD card) is
    copied again and, since the copy replaces the folder, gets a fresh venv even though the
    old folder had a complete one."""
    cfg = _cfg(setup)
    rid = fr.release_id(cfg, fr.sha256_file(setup["wheel"]), setup["bundle"], setup["recipes"])
    probe = dict(JETSON_PROBE, release="1", venv_stamp=rid)  # present, stamped, but not verified
    t = FakeTransport(probe)
    fr.flash_robot(cfg, transport=t, log=lambda _: None)
    assert [k for k, _ in t.scripts] == ["probe", "prepare", "verify", "venv", "selftest", "switch", "service"]
    assert len(t.uploads) == 1


def test_prebuilt_wheel_and_recipes_need_no_checkout(setup, monkeypatch):
    """With --wheel and --recipes, edge-flash works where no source checkout exists (installed
    from a wheel); without them it says how to proceed."""
    def no_checkout(start=None):
        raise FlashError("no checkout here; pass a prebuilt wheel with --wheel PATH")

    monkeypatch.setattr(fr, "find_project_root", no_checkout)
    t = FakeTransport(JETSON_PROBE)
    assert fr.flash_robot(_cfg(setup), transport=t, log=lambda _: None) == 0
    with pytest.raises(FlashError, match="--wheel PATH"):
        fr.flash_robot(_cfg(setup, recipes=None), transport=FakeTransport(JETSON_PROBE), log=lambda _: None)
