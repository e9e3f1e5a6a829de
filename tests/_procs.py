"""The process table as /proc shows it, for tests and benchmarks that watch what a federation started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple


class Proc(NamedTuple):
    parent: int
    state: str  # "Z": a zombie, which holds no memory
    name: str
    ticks: int  # user + system CPU time


def proc_table() -> dict[int, Proc]:
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                text = (d / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2:].split()
            table[int(d.name)] = Proc(int(fields[1]), fields[0], text[text.find("(") + 1:text.rfind(")")],
                                      int(fields[11]) + int(fields[12]))
    return table


def descendants(roots: set[int], table: dict[int, Proc]) -> set[int]:
    """`roots` that are alive and everything below them."""
    tree = set(roots) & set(table)
    while kids := {p for p, row in table.items() if row.parent in tree} - tree:
        tree |= kids
    return tree


def pids_mentioning(fragment: str) -> list[int]:
    """Live processes (other than this one) with `fragment` on their command line."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if fragment in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def log_tails(root: Path, chars: int = 1500) -> str:
    """The end of every log a federation under `root` wrote (commands' output, SuperLink, SuperNodes, ClientApps,
    `flwr run`): what a failed wait shows, so that a stall seen only in CI can be read from its output."""
    parts = []
    for path in sorted(root.rglob("*")):
        if path.suffix in (".out", ".log") and path.is_file():
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.relative_to(root)} ({len(text)} chars) ---\n{text[-chars:]}")
    return "\n".join(parts)


def sigterm_stops_child(command: subprocess.Popen, ready: Path, child: str) -> None:
    """Once `ready` exists (the command's child is at work), SIGTERM the command: it must exit non-zero within 60 s
    and leave no process mentioning `child` after 30 s more. Kills whatever is left either way."""
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert command.poll() is None and time.monotonic() < deadline, f"{ready} never appeared"
            time.sleep(0.2)
        assert pids_mentioning(child), f"no process mentions {child}"
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while left := pids_mentioning(child):
            assert time.monotonic() < deadline, f"{child}'s process outlived the command: {left}"
            time.sleep(0.2)
    finally:
        if command.poll() is None:
            command.kill()
        for pid in pids_mentioning(child):
            os.kill(pid, signal.SIGKILL)
