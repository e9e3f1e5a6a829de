"""The warm ClientApp launcher's forked children start as fresh processes would (see cli/deploy/warm_clientapps.py)."""

import os

import numpy as np

from cli.deploy.warm_clientapps import prepare_child


def _child_report(home) -> list[str]:
    """Fork; the child prepares itself for a task and reports its first NumPy draw, folder and Flower home."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # no pytest code may run here: report and leave
        try:
            os.close(r)
            prepare_child(home, threads=None)
            os.write(w, f"{np.random.rand():.17g}\n{os.getcwd()}\n{os.environ['FLWR_HOME']}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read().split("\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and len(report) == 3, report
    return report


def test_forked_tasks_draw_their_own_numpy_stream_in_their_node_folder(tmp_path):
    home = tmp_path / "site3" / "flwr-home"
    home.mkdir(parents=True)
    np.random.seed(1234)  # the launcher's stream, which every child would otherwise continue
    first, second = _child_report(home), _child_report(home)
    inherited = np.random.rand()  # what a child that kept the parent's stream would have drawn first
    assert first[0] != second[0]
    assert float(first[0]) != inherited and float(second[0]) != inherited
    assert first[1:] == [str(home.parent), str(home)]
    assert os.environ.get("FLWR_HOME") != str(home) and os.getcwd() != str(home.parent)  # the parent is untouched
