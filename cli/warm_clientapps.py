"""A hospital node's ClientApp launcher: every task runs in a fork of one process that has already imported the app.

Flower's default (`flower-supernode --isolation subprocess`) starts `flower-superexec`, which starts a fresh
`flwr-clientapp` process for every message; each one imports torch and this project again, about 2.5 s of CPU and
700 MB per message. `fgssl node` starts its SuperNode with `--isolation process` and this launcher beside it
instead. Like flower-superexec it asks the SuperNode's local Runtime API for ClientApp tasks, then runs each with
Flower's own `run_clientapp`, unchanged, in a child forked from this warm parent: a message costs a fork, and the
children share the imported code's memory.

Two consequences a hospital should know:
- the ClientApp that runs is the one importable here (the fgssl installed on this node), not code shipped in the
  run's FAB;
- the Runtime API's AcquireTask call is signed with a secret only this node's processes read (Flower leaves it
  open in subprocess mode), so another local user cannot take this node's messages.

The parent never runs a torch operation, so every child starts without thread pools or locks held by other threads.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# The module named by [tool.flwr.app.components] clientapp in pyproject.toml: imported once, here.
APP_MODULE = "simulations.flower_app"
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _run_task(address: str, token: str) -> int:
    """In the forked child: run one ClientApp task to its end with Flower's own code."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    from flwr.supernode.runtime.run_clientapp import run_clientapp
    try:
        run_clientapp(runtime_api_address=address, token=token, insecure=True, certificates=None,
                      parent_pid=os.getppid(), runtime_dependency_install=False)
        return 0
    except SystemExit as e:  # run_clientapp always ends with flwr_exit
        return e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
        traceback.print_exc()
        return 1


class Launcher:
    """Polls the Runtime API for ClientApp tasks and forks one child per task."""

    def __init__(self, address: str, secret: bytes, supernode_pid: int, poll_s: float) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.supernode_pid, self.poll_s = address, supernode_pid, poll_s
        self.supervisor = os.getppid()  # `fgssl node`: if it goes, this launcher is re-parented and must go too
        self.children: set[int] = set()
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                          SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=frozenset({_ACQUIRE}))],
            retry_invoker=make_simple_http_retry_invoker())

    def supernode_alive(self) -> bool:
        try:
            os.kill(self.supernode_pid, 0)
        except ProcessLookupError:
            return False
        return os.getppid() == self.supervisor

    def reap(self) -> None:
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    print(f"ClientApp task process {pid} exited with code {code}", flush=True)

    def acquire(self) -> str | None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        return res.token if res.HasField("task") and res.token else None

    def launch(self, token: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # A SIGTERM between fork and the child's own handlers would run this loop's stop in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = _run_task(self.address, token)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # never the parent's exit handlers, nor its HTTP client's shutdown
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.children.add(pid)

    def serve(self) -> None:
        answering = None
        while self.supernode_alive():
            self.reap()
            try:
                token = self.acquire()
            except Exception as e:  # noqa: BLE001 - the SuperNode starting or stopping its API must not end this loop
                if answering is not False:
                    print(f"the SuperNode's Runtime API at {self.address} does not answer ({type(e).__name__}); "
                          "retrying", flush=True)
                answering, token = False, None
            else:
                if not answering:
                    print(f"polling the SuperNode's Runtime API at {self.address} for ClientApp tasks", flush=True)
                answering = True
            if token:
                self.launch(token)
            else:
                time.sleep(self.poll_s)

    def stop(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cli.warm_clientapps", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT")
    p.add_argument("--secret-file", required=True, type=Path, help="the SuperExec auth secret (raw bytes, 0600)")
    p.add_argument("--supernode-pid", required=True, type=int, help="exit when this process is gone")
    p.add_argument("--poll", type=float, default=0.2, metavar="S", help="seconds between task polls")
    args = p.parse_args(argv)

    import importlib
    importlib.import_module(APP_MODULE)
    print(f"ClientApp launcher ready (pid {os.getpid()}): {APP_MODULE} imported once; one fork per task", flush=True)

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    launcher = Launcher(args.runtime_api_address, args.secret_file.read_bytes(), args.supernode_pid, args.poll)
    try:
        launcher.serve()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
