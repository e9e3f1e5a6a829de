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

import httpx

from cli.deploy.processes import stop_on_signals

# The module named by [tool.flwr.app.components] clientapp in pyproject.toml: imported once, here.
APP_MODULE = "simulations.flower_app"
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def prepare_child(flwr_home: Path, threads: int | None) -> None:
    """In a forked child, before its task: the signals, folders and random state a fresh process would have.

    The Flower home is the task's node's own: each node installs the run's FAB there, and nodes sharing one folder
    would read each other's half-written copy. Forked children would all continue the parent's NumPy stream, where
    fresh processes each seed their own from the OS (Flower's SecAgg+ rounds stochastically with it); Python's
    `random` reseeds itself at fork, DP noise comes from `secrets`, and torch's default generator starts from its
    fixed seed either way.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    os.environ["FLWR_HOME"] = str(flwr_home)
    os.chdir(flwr_home.parent)
    import numpy as np
    np.random.seed()
    if threads:
        import torch
        torch.set_num_threads(threads)


def _run_task(address: str, token: str, flwr_home: Path, threads: int | None) -> int:
    """In the forked child: run one ClientApp task to its end with Flower's own code."""
    prepare_child(flwr_home, threads)
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


class RefusedSecret(RuntimeError):
    """The SuperNode's Runtime API does not accept the secret this launcher signs with."""


class Launcher:
    """Polls each SuperNode's Runtime API for ClientApp tasks and forks one child per task."""

    def __init__(self, nodes: dict[str, tuple[int, Path]], secret: bytes, poll_s: float,
                 threads: int | None = None) -> None:
        """`nodes`: Runtime API address -> that SuperNode's pid and Flower home (several when hospitals share a
        machine)."""
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.retry.retry_invoker import RetryInvoker
        from flwr.supercore.runtime import RuntimeHttpClient

        # One try per call: the loop below is the retry. (Flower's own HTTP retry invoker answers a 401 by sending
        # SIGINT to its process.)
        once = RetryInvoker(lambda: (w for w in ()), (), max_tries=1, max_time=None, jitter=None)

        self.nodes, self.poll_s, self.threads = dict(nodes), poll_s, threads
        self.supervisor = os.getppid()  # `fgssl node`: if it goes, this launcher is re-parented and must go too
        self.children: set[int] = set()
        self.answering: dict[str, bool | None] = {a: None for a in nodes}
        self.clients = {a: RuntimeHttpClient.from_server_address(
            server_address=a, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                          SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=frozenset({_ACQUIRE}))],
            retry_invoker=once) for a in nodes}

    def live_nodes(self) -> list[str]:
        if os.getppid() != self.supervisor:
            return []
        for address, (pid, _) in list(self.nodes.items()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                del self.nodes[address]
        return list(self.nodes)

    def reap(self) -> None:
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    print(f"ClientApp task process {pid} exited with code {code}", flush=True)

    def acquire(self, address: str) -> str | None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        try:
            res = self.clients[address].AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        except httpx.HTTPStatusError as e:
            if e.response.status_code == httpx.codes.UNAUTHORIZED:
                raise RefusedSecret(f"the SuperNode at {address} refused this launcher's secret (HTTP 401)") from None
            raise
        except Exception as e:  # noqa: BLE001 - a SuperNode starting or stopping its API must not end this loop
            if self.answering[address] is not False:
                print(f"the SuperNode's Runtime API at {address} does not answer ({type(e).__name__}); retrying",
                      flush=True)
            self.answering[address] = False
            return None
        if not self.answering[address]:
            print(f"polling the SuperNode's Runtime API at {address} for ClientApp tasks", flush=True)
        self.answering[address] = True
        return res.token if res.HasField("task") and res.token else None

    def launch(self, address: str, token: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # A SIGTERM between fork and the child's own handlers would run this loop's stop in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = _run_task(address, token, self.nodes[address][1], self.threads)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # never the parent's exit handlers, nor its HTTP clients' shutdown
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.children.add(pid)

    def serve(self) -> None:
        while nodes := self.live_nodes():
            self.reap()
            launched = False
            for address in nodes:
                if token := self.acquire(address):
                    self.launch(address, token)
                    launched = True
            if not launched:
                time.sleep(self.poll_s)

    def stop(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3  # inside the supervisor's grace (processes.STOP_GRACE_S)
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for client in self.clients.values():
            client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cli.deploy.warm_clientapps", description=__doc__.split("\n\n")[0])
    p.add_argument("--node", action="append", required=True, nargs=3, metavar=("HOST:PORT", "PID", "FLWR_HOME"),
                   help="a SuperNode's Runtime API address, its pid and its Flower home (repeat for SuperNodes "
                        "sharing this machine)")
    p.add_argument("--secret-file", required=True, type=Path, help="the SuperExec auth secret (raw bytes, 0600)")
    p.add_argument("--poll", type=float, default=0.2, metavar="S", help="seconds between task polls")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per task (default: torch's own, all cores; nodes sharing a machine split it)")
    args = p.parse_args(argv)

    import importlib
    importlib.import_module(APP_MODULE)
    print(f"ClientApp launcher ready (pid {os.getpid()}): {APP_MODULE} imported once; one fork per task", flush=True)

    stop_on_signals()
    nodes = {address: (int(pid), Path(home)) for address, pid, home in args.node}
    launcher = Launcher(nodes, args.secret_file.read_bytes(), args.poll, args.threads)
    try:
        launcher.serve()
    except KeyboardInterrupt:
        pass
    except RefusedSecret as e:
        print(f"error: {e}", flush=True)
        return 1
    finally:
        launcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
