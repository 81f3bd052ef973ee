"""protocol.children: a child started through it runs as `python -m` would, runs none of the
parent's at-fork handlers (gRPC's logged into a child's stderr in CI), and dies with its parent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from protocol import children

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has ended all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_module_child_runs_as_python_dash_m_with_its_arguments(tmp_path):
    (tmp_path / "echo_args.py").write_text("import sys\nprint(__name__, sys.argv[1:])\nsys.exit(3)\n")
    done = subprocess.run(children.module_argv("echo_args", "--a", "b c"), env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "__main__ ['--a', 'b c']\n", "")


def test_an_exec_child_becomes_the_program(tmp_path):
    done = subprocess.run(children.exec_argv("sh", "-c", "echo $0 $1; exit 4", "x", "y"), capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (4, "x y\n", "")


def test_starting_a_child_runs_none_of_the_parents_at_fork_handlers(tmp_path):
    marker = tmp_path / "forked"
    parent = textwrap.dedent(f"""
        import os, subprocess
        from protocol import children
        os.register_at_fork(after_in_child=lambda: open({str(marker)!r}, "a").write("ran\\n"))
        subprocess.run(children.exec_argv("true"), check=True)
        subprocess.run(children.module_argv("this", "x"), check=True, stdout=subprocess.DEVNULL)
    """)
    subprocess.run([sys.executable, "-c", parent], env=_env(tmp_path), cwd=tmp_path, check=True, timeout=60)
    assert not marker.exists(), marker.read_text()


def test_children_die_when_their_parent_is_killed(tmp_path):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(120)\n")
    parent = textwrap.dedent("""
        import subprocess, sys, time
        from protocol import children
        first = subprocess.Popen(children.exec_argv("sleep", "120"))
        second = subprocess.Popen(children.module_argv("sleeper"))
        print(first.pid, second.pid, flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], env=_env(tmp_path), cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in process.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        time.sleep(0.5)  # let both boot interpreters reach prctl
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids), [pid for pid in pids if _alive(pid)]
    finally:
        process.kill()
        process.stdout.close()
