"""Reach the robot computer with the system OpenSSH client (``ssh``, ``scp``) or ``rsync``.

Using the system tools means the user's ``~/.ssh/config``, keys, agent and jump hosts just
work, and ``edge-flash`` never sees or stores a credential. Every call runs with
``-o BatchMode=yes`` so a missing key fails at once instead of hanging on a password prompt.

Remote scripts are POSIX ``sh`` fed on stdin (``ssh HOST sh -s < script``), so the user's
login shell and quoting never matter, and the dry-run prints them as an exact, runnable
here-document.

:class:`SshTransport` is the only thing that touches the network; the flasher takes it as a
parameter so tests can wrap it (e.g. corrupt a file after the copy to prove the hash check).
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.flash.errors import FlashError

TRANSFERS = ("scp", "rsync")
"""How files travel: ``scp -r`` (always there) or ``rsync -a`` (faster on upgrades)."""


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect.

    Attributes:
        host: ``USER@HOST`` or a ``Host`` alias from the user's ssh config.
        port: SSH port; None = the ssh config's (usually 22).
        options: extra ``-o`` options, each ``Key=Value`` (e.g. ``ProxyJump=gw``).
        identity_file: private key to use (``-i``); None = the ssh config's / agent's.
        config_file: an ssh config file to use instead of ``~/.ssh/config`` (``-F``).
        connect_timeout_s: give up on an unreachable host after this many seconds.
    """

    host: str
    port: int | None = None
    options: tuple[str, ...] = ()
    identity_file: str | None = None
    config_file: str | None = None
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise FlashError(f"--host {self.host!r} is not a host: give USER@HOST (e.g. pi@robot.local)")
        if self.port is not None and not 0 < self.port < 65536:
            raise FlashError(f"--port {self.port} is out of range 1..65535")
        for opt in self.options:
            if "=" not in opt or opt.startswith("-"):
                raise FlashError(f"--ssh-option {opt!r} must look like Key=Value (e.g. ProxyJump=gateway)")
        if self.connect_timeout_s <= 0:
            raise FlashError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")

    def _common(self) -> list[str]:
        """Options shared by ssh and scp (BatchMode first: the first value of an option wins)."""
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}"]
        if self.config_file:
            args += ["-F", self.config_file]
        if self.identity_file:
            args += ["-i", self.identity_file]
        for opt in self.options:
            args += ["-o", opt]
        return args

    def ssh_argv(self) -> list[str]:
        """``ssh`` with every option, without the host."""
        args = ["ssh", *self._common()]
        if self.port is not None:
            args += ["-p", str(self.port)]
        return args

    def scp_argv(self) -> list[str]:
        """``scp`` with every option (scp spells the port ``-P``)."""
        args = ["scp", *self._common()]
        if self.port is not None:
            args += ["-P", str(self.port)]
        return args


@dataclass(frozen=True)
class RemoteResult:
    """What a remote script did: exit status and its output (text)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def explain_ssh_failure(target: SshTarget, stderr: str) -> str:
    """Turn ssh's own error (exit status 255) into a sentence saying what to do next."""
    where = target.host + (f" (port {target.port})" if target.port else "")
    last = next((ln.strip() for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "no message")
    low = stderr.lower()
    if "permission denied" in low:
        return (f"permission denied by {where}: the robot did not accept your SSH key. Install it once with "
                f"`ssh-copy-id {target.host}` (edge-flash never types passwords: it runs ssh with "
                f"BatchMode=yes) or pass --identity-file ({last})")
    if "could not resolve hostname" in low or "name or service not known" in low:
        return (f"cannot resolve the robot's host name in {target.host!r}: check the spelling, use its IP "
                f"address, or add a Host entry to ~/.ssh/config ({last})")
    if "connection refused" in low:
        return (f"{where} refused the SSH connection: is the SSH server running on the robot "
                f"(`sudo systemctl enable --now ssh`) and is the port right? ({last})")
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return (f"the host key of {target.host} is unknown or changed: connect once by hand with "
                f"`ssh {target.host}` to check and accept it, then re-run ({last})")
    if any(s in low for s in ("timed out", "no route to host", "network is unreachable", "connection closed")):
        return (f"cannot reach {where}: the robot is off, on another network, or a firewall drops SSH "
                f"(try `ssh {target.host} true`) ({last})")
    return f"ssh to {where} failed: {last} (try `ssh {target.host} true` to see the problem)"


Runner = Callable[..., subprocess.CompletedProcess]
"""``subprocess.run``-compatible callable (injected by tests that must not start processes)."""


class SshTransport:
    """Runs scripts on, and copies folders to, one robot over SSH.

    Args:
        target: where and how to connect.
        transfer: ``scp`` or ``rsync`` for :meth:`upload`.
        runner: ``subprocess.run`` or a compatible callable.
    """

    def __init__(self, target: SshTarget, transfer: str = "scp", runner: Runner = subprocess.run) -> None:
        if transfer not in TRANSFERS:
            raise FlashError(f"--transfer {transfer!r} is not one of {', '.join(TRANSFERS)}")
        self.target = target
        self.transfer = transfer
        self._runner = runner

    def run_argv(self) -> list[str]:
        """The exact argv that runs a script given on stdin."""
        return [*self.target.ssh_argv(), self.target.host, "sh", "-s"]

    def describe_run(self, script: str) -> str:
        """The command line (with the script as a here-document) that :meth:`run` executes."""
        body = script.rstrip("\n")
        return f"{shlex.join(self.run_argv())} <<'EDGE_FLASH_EOF'\n{body}\nEDGE_FLASH_EOF"

    def run(self, script: str, timeout_s: float | None = 120.0) -> RemoteResult:
        """Run a POSIX sh ``script`` on the robot.

        Returns the script's exit status and output. Raises :class:`FlashError` when ssh itself
        failed (status 255: unreachable, key refused, unknown host key) or on timeout.
        """
        try:
            proc = self._runner(self.run_argv(), input=script, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError as e:
            raise FlashError("the `ssh` command is not installed here: `sudo apt-get install openssh-client`") from e
        except subprocess.TimeoutExpired as e:
            raise FlashError(f"a remote step on {self.target.host} did not finish within {timeout_s:.0f} s") from e
        if proc.returncode == 255:
            raise FlashError(explain_ssh_failure(self.target, proc.stderr or ""))
        return RemoteResult(proc.returncode, proc.stdout or "", proc.stderr or "")

    def upload_argv(self, local_dir: Path, remote_dir: str) -> list[str]:
        """The exact argv that copies ``local_dir``'s contents into the absent ``remote_dir``."""
        if self.transfer == "rsync":
            ssh_cmd = shlex.join(self.target.ssh_argv())
            return ["rsync", "-a", "--copy-links", "-e", ssh_cmd, f"{local_dir}/", f"{self.target.host}:{remote_dir}/"]
        return [*self.target.scp_argv(), "-r", "-p", "-q", str(local_dir), f"{self.target.host}:{remote_dir}"]

    def describe_upload(self, local_dir: Path, remote_dir: str) -> str:
        return shlex.join(self.upload_argv(local_dir, remote_dir))

    def upload(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the contents of ``local_dir`` into ``remote_dir`` (absolute, not yet existing;
        its parent exists). Raises :class:`FlashError` naming the cause."""
        argv = self.upload_argv(local_dir, remote_dir)
        try:
            proc = self._runner(argv, capture_output=True, text=True, timeout=None)
        except FileNotFoundError as e:
            raise FlashError(f"the `{argv[0]}` command is not installed here "
                             f"(`sudo apt-get install {'rsync' if argv[0] == 'rsync' else 'openssh-client'}`)") from e
        if proc.returncode != 0:
            err = proc.stderr or ""
            if "permission denied" in err.lower() and "publickey" not in err.lower():
                raise FlashError(f"permission denied writing {remote_dir} on {self.target.host}: "
                                 f"choose a --remote-dir the SSH user owns ({err.strip().splitlines()[-1]})")
            if proc.returncode == 255 or "connection" in err.lower():
                raise FlashError(explain_ssh_failure(self.target, err))
            last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
            raise FlashError(f"copying files to {self.target.host}:{remote_dir} failed: {last}")
