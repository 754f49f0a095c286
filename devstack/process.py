"""Starting, watching and stopping the dev stack's server processes.

Servers are started in their own session (``setsid``) so they outlive the ``fhectl``
that started them, and are tracked by pid in the stack's state file. ``stop`` only
signals a pid whose command line still matches what we started, so a pid recycled by
the kernel for an unrelated process is never killed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from coprocessor.errors import ServiceUnavailable, UserError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free_port(port: int, service: str) -> None:
    if port_is_open(port):
        raise UserError(f"{service}: port {port} on 127.0.0.1 is already in use")


def choose_port(requested: int | None, previous: dict | None, service: str) -> int:
    """The port a component listens on: the one asked for (it must be free), else the
    one it had before if still free (so URLs survive a restart), else any free one."""
    if requested:
        require_free_port(requested, service)
        return requested
    if previous and previous.get("port") and not port_is_open(previous["port"]):
        return int(previous["port"])
    return free_port()


def require_installed(path: Path, what: str) -> Path:
    """A server binary the installer should have put in place."""
    if not path.exists():
        raise UserError(f"{what} is not installed ({path}); run `make setup` first")
    return path


def spawn(
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start a detached server; its output goes to ``log_path``. Returns the pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    if user is not None:
        record = pwd.getpwnam(user)
        full_env.update(HOME=record.pw_dir, USER=user, LOGNAME=user)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                **run_as(user),
            )
        except FileNotFoundError:
            raise UserError(f"{argv[0]} is not installed; run `make setup` first") from None
    return proc.pid


def run_as(user: str | None) -> dict[str, object]:
    """Popen arguments that switch to ``user`` completely: uid, primary group and no
    supplementary groups. Keeping root's gid would apply the *group* bits of root-owned
    directories (often 0) instead of the *other* bits we grant."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if ") Z" in status:
        _reap(pid)
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(pid: int | None, expect: str | None = None) -> bool:
    """True if ``pid`` is alive and, when given, its argv mentions ``expect``."""
    if not pid:
        return False
    argv = cmdline(pid)
    if argv is None:
        return False
    return expect is None or any(expect in part for part in argv)


def stop(
    pid: int | None, expect: str | None = None, timeout: float = 15.0, signum: int = signal.SIGTERM
) -> bool:
    """``signum``, wait, then SIGKILL. Returns True if a process of ours was stopped."""
    if not is_running(pid, expect):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_running(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    return True


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    service: str,
    log_path: Path | None = None,
    pid: int | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it is true; fail with the service's last log lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not is_running(pid):
            raise ServiceUnavailable(service, f"process exited during start{_tail(log_path)}")
        time.sleep(interval)
    raise ServiceUnavailable(service, f"not ready after {timeout:.0f}s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 3) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return "; log: " + " | ".join(line.strip() for line in text) if text else ""
