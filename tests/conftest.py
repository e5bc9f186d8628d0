"""Suite-wide hooks.

Why the hard exit: one CI run (stop 19) printed "608 passed" and then died with SIGSEGV (exit 139) while
the interpreter tore itself down. That stage runs the C++ destructors of onnxruntime sessions, FAISS
indexes, torch's and FAISS's OpenMP pools and the numpy mmaps of version files in whatever order module
cleanup reaches them, and two OpenMP runtimes in one process are known to crash there now and then. Nothing
after the summary is a test, so once pytest has reported, the process leaves with pytest's own exit status
and skips that stage. A crash *during* the run is still a crash: this only runs after every test has ended.
"""

from __future__ import annotations

import os
import sys

import pytest

_exit_status: int | None = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Only for a whole run from the command line: pytester/in-process runs must return to their caller, and
    # an xdist worker must leave through xdist's own shutdown (the controller waits for its last message).
    if _exit_status is None or os.environ.get("EDGEREC_TEST_NO_HARD_EXIT") or not config.option.hard_exit:
        return
    if hasattr(config, "workerinput"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-hard-exit",
        dest="hard_exit",
        action="store_false",
        default=True,
        help="let the interpreter tear down normally after the run (tests/conftest.py says why not)",
    )
