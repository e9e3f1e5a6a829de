"""Starting, watching and stopping the long-lived processes of a deployment (SuperLink, SuperNodes, `flwr run`).

Every child starts in its own session, so a Ctrl-C in the terminal reaches only the `fgssl` command, which then stops
its children in order (SIGTERM, a grace period, SIGKILL) by pid. Flower's helpers (SuperExec, ServerApp and ClientApp
processes) are detached from their parents; `become_subreaper` makes them ours once their parent is gone, so
`stop_orphans` can end and reap them instead of leaving them to init.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PR_SET_CHILD_SUBREAPER = 36


class ChildExited(RuntimeError):
    """A child process ended while it was still needed."""


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (`docker stop`, kill) both raise KeyboardInterrupt, whose handler cleans up.

    SIGINT is set explicitly: a process started in the background of a non-interactive shell (a CI script, `cmd &`
    in a script, nohup) inherits SIGINT as *ignored*, and Python then installs no handler, so Ctrl-C by pid would
    do nothing and the command would run on until SIGKILLed.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """`stop_on_signals` while inside, the previous handlers restored after: for a command that runs children one at
    a time (a sweep's or a study's runs), whose own clean-up stops the running child. Without it SIGTERM ended the
    command at once and left its child simulation running. Only the main thread can set handlers; elsewhere
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop_on_signals()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process rather than to init. False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return ""


# Run in the child before it becomes the command: SIGTERM when the process that started it dies, even by SIGKILL
# (which runs no clean-up), so a killed `fgssl serve` or `fgssl node` leaves no SuperLink or SuperNode holding its
# port. A separate exec, not Popen's preexec_fn: that makes Python fork with its at-fork hooks, and a Ctrl-C that
# lands in one of those is swallowed ("Exception ignored"), so the command would not stop.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys\n"
                    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
                    "if os.getppid() != int(sys.argv[1]):\n"
                    "    sys.exit(1)  # the parent was already gone before the signal was armed\n"
                    "os.execvp(sys.argv[2], sys.argv[2:])\n")


def die_with_parent(cmd: Sequence[str]) -> list[str]:
    """`cmd`, started so that it gets SIGTERM when this process dies (Linux; elsewhere `cmd` as it is)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-I", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


class Child:
    """One started process; its output goes to `log_path`, line by line through `on_line` when one is given."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, on_line: Callable[[str], None] | None = None) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")
        self.popen = subprocess.Popen(die_with_parent(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                                      text=True, errors="replace", bufsize=1)
        self._reader = threading.Thread(target=self._pump, args=(on_line,), name=f"{name}-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self, on_line: Callable[[str], None] | None) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = strip_ansi(raw.rstrip("\n"))
            self._log.write(line + "\n")
            self._log.flush()
            if on_line is not None:
                on_line(line)
        self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None, output_timeout: float = 5.0) -> int:
        code = self.popen.wait(timeout)
        # A helper the child left behind may hold its output pipe open: do not wait for that one.
        self._reader.join(timeout=output_timeout)
        return code

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # its own session: the group is this child and its kin
        except ProcessLookupError:
            pass

    def request_stop(self) -> None:
        """SIGTERM without waiting: many children can then wind down at once before `stop` waits for each."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM (the child shuts down its own helpers), then SIGKILL to its process group after `grace` s."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill_group()
            except ProcessLookupError:
                pass
        return self.wait(timeout=grace)


STOP_GRACE_S = 3.0  # SIGTERM to SIGKILL when shutting down; the whole stop stays well under 10 s


def stop_all(children: Sequence[Child | None], grace: float = STOP_GRACE_S, orphan_grace: float = 1.0) -> None:
    """Stop every child at once and reap the helpers re-parented to us, all within ~`grace` + 2 + 2·`orphan_grace` s.

    One shared deadline, not a grace period per child: Flower's processes can take seconds each to exit under load
    (each waits for its own helpers), and sequential waits of 10 s per child added up to over a minute. Further
    SIGINT/SIGTERM are ignored meanwhile, so a second Ctrl-C cannot abort the clean-up half way and leave orphans.
    """
    live = [c for c in children if c is not None]
    with _signals_ignored():
        for child in live:
            child.request_stop()
        deadline = time.monotonic() + grace
        for child in live:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill_group()
        for child in live:
            try:
                child.wait(timeout=2.0, output_timeout=0.5)
            except subprocess.TimeoutExpired:
                pass  # SIGKILLed but not yet gone (uninterruptible I/O): nothing more to send it
        stop_orphans({c.pid for c in live}, grace=orphan_grace)


class _signals_ignored:
    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> None:
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in self._SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def wait_for_port(host: str, port: int, child: Child, timeout: float) -> None:
    """Until `host:port` accepts TCP connections; ChildExited if `child` ends first, TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise ChildExited(f"{child.name} exited with code {child.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{child.name} did not open {host}:{port} within {timeout:.0f} s")


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces or parentheses: the fields we need follow the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def stop_orphans(known: set[int], grace: float = 3.0) -> list[int]:
    """Stop and reap descendants re-parented to this process (see `become_subreaper`) that are not in `known`.

    They are Flower helpers whose parent we already stopped and that have had its grace period to end with it, so
    they get SIGTERM at once and SIGKILL `grace` seconds later.
    """
    if not Path("/proc").is_dir():
        return []
    me = os.getpid()
    found: set[int] = set()
    deadline = time.monotonic() + 2 * grace
    signalled: dict[int, int] = {}
    start = time.monotonic()
    while time.monotonic() < deadline:
        pids = [p for p in _children_of(me) if p not in known]
        if not pids:
            break
        for pid in pids:
            found.add(pid)
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                continue
            elapsed = time.monotonic() - start
            sig = signal.SIGKILL if elapsed > grace else signal.SIGTERM
            if sig is not None and signalled.get(pid) != sig:
                try:
                    os.kill(pid, sig)
                    signalled[pid] = sig
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    return sorted(found)
