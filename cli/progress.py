"""How a command reports what it is doing: human lines (default), results only (--quiet), or JSON lines (--json).

With --json, stdout carries only JSON objects, one per line, each with an "event" key, so a script (or `fgssl
sweep`, which runs `fgssl simulate --json` per cell) can follow a run without parsing prose. Errors still go to
stderr as one line (and as an "error" event on stdout, see cli/main.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm

BatchCallback = Callable[[int, int, dict[str, float]], None]


def plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN/inf), numpy/torch scalars plain numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return plain(value.item())
    return value


class Output:
    """One command's output channel.

    `emit(event, line, result=False, **fields)` is the single way to say something: text mode prints `line`;
    quiet mode prints it only when it is a result (where the run went, final tables); JSON mode prints
    {"event": event, **fields} instead. Progress bars (`bar`) draw with tqdm on stderr in text mode and become
    throttled "progress" events in JSON mode. When stderr is not a terminal (CI, `nohup`, a log file), a bar is a
    plain line at most every `log_interval_s` instead of a stream of carriage-return frames.
    """

    def __init__(self, command: str, *, quiet: bool = False, json_lines: bool = False,
                 stream: TextIO | None = None, interval_s: float = 2.0, log_interval_s: float = 10.0) -> None:
        self.command = command
        self.json = json_lines
        self.quiet = quiet and not json_lines
        self.stream = stream
        self.interval_s = interval_s
        self.log_interval_s = log_interval_s

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str) -> "Output":
        return cls(command, quiet=bool(getattr(args, "quiet", False)), json_lines=bool(getattr(args, "json", False)))

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout  # looked up late so pytest's capsys sees it

    @property
    def shows_progress(self) -> bool:
        return not self.quiet and not self.json

    def emit(self, event: str, line: str | None = None, *, result: bool = False, **fields: Any) -> None:
        if self.json:
            print(json.dumps(plain({"event": event, **fields}), ensure_ascii=False), file=self.out, flush=True)
        elif line is not None and (result or not self.quiet):
            print(line, file=self.out, flush=True)

    def say(self, text: str) -> None:
        """A free-form progress line (e.g. from simulations.run): a "message" event in JSON mode."""
        self.emit("message", text, text=text)

    def bar(self, step: str, total: int) -> "Bar":
        return Bar(self, step, total)


class Bar:
    """Progress of one long step, fed by fgssl's on_batch callbacks (done, total, losses) or by `update`."""

    def __init__(self, output: Output, step: str, total: int) -> None:
        self.output, self.step, self.total = output, step, total
        self.done = 0
        self.last_emit = time.monotonic()
        terminal = output.shows_progress and sys.stderr.isatty()
        self.tqdm = tqdm(total=total, desc=step, leave=False, dynamic_ncols=True) if terminal else None
        self.log_lines = output.shows_progress and not terminal

    def __call__(self, done: int, total: int, losses: dict[str, float] | None = None) -> None:
        self.update(done, total, losses)

    def update(self, done: int, total: int | None = None, losses: dict[str, float] | None = None) -> None:
        self.total = total if total is not None else self.total
        self.done = done
        if self.tqdm is not None:
            self.tqdm.total = self.total
            self.tqdm.update(done - self.tqdm.n)
            if losses:
                self.tqdm.set_postfix(loss=f"{sum(losses.values()):.3f}")
        elif self.log_lines:
            now = time.monotonic()
            if now - self.last_emit >= self.output.log_interval_s:
                self.last_emit = now
                loss = f", loss {sum(losses.values()):.3f}" if losses else ""
                print(f"{self.step}: {done}/{self.total}{loss}", file=sys.stderr, flush=True)
        elif self.output.json:
            now = time.monotonic()
            # throttled: a progress event per batch would swamp a reader
            if done >= self.total or now - self.last_emit >= self.output.interval_s:
                self.last_emit = now
                fields: dict[str, Any] = {"step": self.step, "done": done, "total": self.total}
                if losses:
                    fields["loss"] = sum(losses.values())
                self.output.emit("progress", **fields)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
