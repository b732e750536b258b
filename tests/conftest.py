"""Session-wide safety net shared by every test folder.

A test that makes ``EmbeddedLLMServer.close()`` give up leaves llama.cpp threads generating in
this process; finalising the interpreter under them can crash it with SIGSEGV after every test
has passed (seen once in CI: exit status 139). The test that abandons a server on purpose runs
in a child process; this hook covers one abandoned by accident (a close that ran past its bound
on a slow machine) by ending pytest the way ``edge-run`` ends: at once, with pytest's own status.
"""

from __future__ import annotations

import sys

_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus) -> None:
    _STATUS["exit"] = int(exitstatus)


def pytest_unconfigure(config) -> None:
    embedded = sys.modules.get("edge.fallback.embedded")  # only if a test imported it
    if embedded is not None:
        embedded.exit_now_if_abandoned(_STATUS.get("exit", 1))  # returns when nothing was abandoned
