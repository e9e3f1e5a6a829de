"""The one way a command fails: a user error with an exit code, reported once (a line on stderr, a JSON event)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from fgssl.config import ConfigError
from strategies.fgssl_strategy import RoundFailed


class UserError(Exception):
    """Something the user can fix or must know (bad input, a refused step, a process that died); the message is one
    line naming the file, key or process. Exit code 2 for input the command refuses, 1 for a failure on the way."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(prog: str, args: argparse.Namespace, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    if getattr(args, "json", False):  # a JSON reader sees the end of the stream too
        print(json.dumps({"event": "error", "command": prog.removeprefix("fgssl "), "message": message,
                          "exit_code": code}, ensure_ascii=False), flush=True)
    return code


def run_command(prog: str, args: argparse.Namespace, func: Callable[[argparse.Namespace], int]) -> int:
    """Run one command; every failure a user should see ends here, the same way for every command."""
    try:
        return func(args)
    except (ConfigError, UserError) as e:
        return fail(prog, args, f"error: {e}", getattr(e, "exit_code", 2))
    except (RoundFailed, TimeoutError) as e:
        return fail(prog, args, f"error: {e}", 1)
    except KeyboardInterrupt:
        return fail(prog, args, "interrupted", 130)


def standalone_main(prog: str, doc: str, add: Callable[[argparse.ArgumentParser], None],
                    func: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """`python -m cli.node_cmd` / `cli.nodes_cmd`: the same arguments and exit codes as through `fgssl`."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add(parser)
    return run_command(prog, parser.parse_args(argv), func)
