"""The coordinator of a real federation (`fgssl serve`; its arguments are parsed in cli/serve_cmd.py).

Starts Flower's SuperLink with TLS and SuperNode authentication, registers the hospitals' public keys, launches this
project's app on it (`flwr run`), streams the rounds, writes the same run directory as `fgssl simulate`, and stops the
SuperLink by pid at the end, on Ctrl-C / SIGTERM, or with a clear error when something it needs dies.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from fgssl.config import Config, ConfigError, load_config
from fgssl.data.classes import class_names_of
from fgssl.rundir import CONFIG, SUMMARY, RunDir, default_run_dir
from server.deployment import config_to_run_value
from simulations import DEFAULT_CONFIG

from cli.common import cross_site_text, format_table
from cli.deploy.federation import (DeployError, ServerCerts, find_public_keys, flower_env, flwr_run_command,
                                   join_address, local_host_for, parse_address, register_keys, superlink_command,
                                   write_connection, write_run_config)
from cli.deploy.processes import Child, ChildExited, become_subreaper, stop_all, stop_on_signals, tail, wait_for_port

SUPERLINK_DB = "superlink.sqlite3"  # the SuperLink's state, kept for a resumed coordinator
TABLE = ["site", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "epsilon"]
# Real datasets live on the hospitals: the coordinator's config names the dataset (for its classes) but no folder.
NODE_DATA = {"data": {"root": "(each node's --root)", "csv": "(each node's --csv)"}}


def resolve_federation_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    path = args.config or DEFAULT_CONFIG
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        if e.key not in ("data.root", "data.csv"):
            raise
        return load_config(path, overrides, base=NODE_DATA)


def app_folder(args: argparse.Namespace) -> Path:
    app = Path(args.app).resolve() if args.app else Path(__file__).resolve().parents[2]
    toml = app / "pyproject.toml"
    if not toml.is_file() or "[tool.flwr.app]" not in toml.read_text(encoding="utf-8"):
        raise DeployError(f"--app: {app} holds no pyproject.toml with a [tool.flwr.app] section; fgssl serve needs "
                          "this project's source folder (or pass --app DIR)")
    return app


def resumed_run(args: argparse.Namespace) -> tuple[RunDir, Config]:
    """The run directory `--resume` names and its saved config; a clear error when it is not a run to continue."""
    saved = Path(args.resume).expanduser().resolve() / CONFIG
    if not saved.is_file():
        raise ConfigError("--resume", f"{saved} not found: is {args.resume} the run directory of an earlier "
                          "`fgssl serve`?")
    if args.config or args.overrides or args.seed is not None or args.out:
        raise ConfigError("--resume", "a resumed run keeps its saved config and folder; drop --config/--set/--seed/--out")
    try:
        cfg = load_config(saved)
    except ConfigError as e:
        if e.key not in ("data.root", "data.csv"):
            raise
        cfg = load_config(saved, base=NODE_DATA)
    return RunDir(saved.parent), cfg


def serve(args: argparse.Namespace) -> int:
    """`fgssl serve` from its parsed arguments; the exit code."""
    resume = bool(getattr(args, "resume", None))
    if resume:
        run_dir, cfg = resumed_run(args)
    else:
        cfg = resolve_federation_config(args)
    class_names_of(cfg.data)  # the server's only knowledge of the data: fail now, not after the SuperLink started
    certs_dir = Path(args.certs).expanduser().resolve()
    certs = ServerCerts.from_dir(certs_dir)
    host, port = parse_address(args.address, "--address")
    keys = [Path(k).expanduser().resolve() for k in args.register] if args.register else find_public_keys(certs_dir)
    if not keys:
        raise DeployError(f"no public keys to register: {certs_dir / 'nodes'} has no */node.pub; pass --register")
    app = app_folder(args)
    local = join_address(local_host_for(certs.hosts(), host), port)

    if not resume:
        run_dir = RunDir(Path(args.out or default_run_dir("serve")).resolve())
        run_dir.write_config(cfg)
        (run_dir.path / SUPERLINK_DB).unlink(missing_ok=True)  # a new run: no nodes, runs or messages of an old one
    say = functools.partial(print, flush=True)  # progress must reach a pipe or log file at once

    def stream(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    stop_on_signals()
    become_subreaper()
    flwr_home = Path(tempfile.mkdtemp(prefix="fgssl-serve-flwr-home-"))
    env = flower_env(flwr_home)
    superlink: Child | None = None
    runner: Child | None = None
    ready = Path(args.ready_file).expanduser().resolve() if args.ready_file else None
    # A resumed run keeps the state its first coordinator kept; without it the hospitals restart `fgssl node`.
    database = run_dir.path / SUPERLINK_DB
    database = database if args.durable or (resume and database.exists()) else None
    say(f"fgssl serve: {'resuming' if resume else 'writing to'} {run_dir.path}"
        + (f" (SuperLink state in {database.name})" if database else ""))
    try:
        say(f"fgssl serve: starting the SuperLink on {join_address(host, port)} (TLS with {certs.cert.name}, "
            f"SuperNode authentication on); log: {run_dir.path / 'superlink.log'}")
        superlink = Child("the SuperLink", superlink_command(certs, host, port, database),
                          run_dir.path / "superlink.log",
                          env=env)
        try:
            wait_for_port(local.rsplit(":", 1)[0].strip("[]"), port, superlink, args.start_timeout)
        except (ChildExited, TimeoutError) as e:
            raise DeployError(f"{e}; last lines of {superlink.log_path}:\n{tail(superlink.log_path)}",
                              exit_code=1) from None
        say(f"fgssl serve: SuperLink up (pid {superlink.pid}); the flwr CLI reaches it at {local}")
        write_connection(flwr_home, local, certs.ca_cert)

        registered = register_keys(keys, env)
        say(f"fgssl serve: registered {len(registered)} SuperNode public key{'s' * (len(registered) != 1)}:")
        for key, node_id in registered.items():
            say(f"  {key}  ({node_id if not node_id.isdigit() else f'Flower node {node_id}'})")

        run_config = write_run_config(run_dir.path / "run-config.toml", {
            "deployment": True, "resolved-config": config_to_run_value(cfg), "run-dir": str(run_dir.path),
            "resume": resume,
            "config": str(Path(args.config).resolve()) if args.config and not resume else "",
            "overrides": "" if resume else ";".join(args.overrides)})
        say(f"fgssl serve: launching the app from {app} (flwr run; log: {run_dir.path / 'flwr-run.log'}); waiting "
            f"for {cfg.federation.sites} hospitals, each started with:")
        say(f"  fgssl node --superlink <this host>:{port} --ca {certs.ca_cert} "
            f"--key {certs_dir}/nodes/node_<i>/node.key --site <i> --dataset <name> [--root DIR] --state-dir DIR")
        started = time.time()
        runner = Child("flwr run", flwr_run_command(app, run_config), run_dir.path / "flwr-run.log", env=env,
                       cwd=app, on_line=stream)
        if ready is not None:
            ready.write_text(f"{superlink.pid}\n")
        while runner.alive():
            if not superlink.alive():
                raise DeployError(f"the SuperLink (pid {superlink.pid}) exited with code {superlink.returncode} "
                                  f"during the run; last lines of {superlink.log_path}:\n{tail(superlink.log_path)}",
                                  exit_code=1)
            time.sleep(0.5)
        code = runner.wait()
        summary_path = run_dir.path / SUMMARY
        if not summary_path.is_file() or summary_path.stat().st_mtime < started:
            raise DeployError(f"the run ended (flwr run exit code {code}) without a summary; see "
                              f"{runner.log_path} and {superlink.log_path}:\n{tail(runner.log_path)}", exit_code=1)
    finally:
        if ready is not None:
            ready.unlink(missing_ok=True)
        _shutdown(runner, superlink, flwr_home, say)
    _finish(run_dir, say)
    return 0


def _shutdown(runner: Child | None, superlink: Child | None, flwr_home: Path, say: Callable[[str], None]) -> None:
    for child in (runner, superlink):
        if child is not None and child.alive():
            say(f"fgssl serve: stopping {child.name} (pid {child.pid})")
    stop_all([runner, superlink])
    shutil.rmtree(flwr_home, ignore_errors=True)


def _finish(run_dir: RunDir, say: Callable[[str], None]) -> None:
    summary = RunDir.open(run_dir.path).summary or {}
    rows = [{"site": s, **m} for s, m in summary.get("final", {}).items()]
    if rows:
        say(format_table(rows, [c for c in TABLE if c != "epsilon" or any("epsilon" in r for r in rows)]))
    if summary.get("cross_site"):
        say(cross_site_text(summary["cross_site"]))
    say(f"privacy: {summary['privacy']['text']}")
    say(f"fgssl serve: done in {summary['elapsed_s']:.0f} s; results in {run_dir.path} (summary.json, "
        f"metrics.jsonl, metrics.csv, {'cross_site.csv, ' if summary.get('cross_site') else ''}model.safetensors + "
        "model.json, checkpoint/, superlink.log, flwr-run.log)")
    from cli.reports.report import write_report
    try:
        paths = write_report(run_dir.path)
        say(f"fgssl serve: report in {paths.html} and {paths.markdown}")
    except Exception as e:  # noqa: BLE001 (the results are safe on disk; the report is a bonus)
        say(f"fgssl serve: could not write the report: {type(e).__name__}: {e}")
