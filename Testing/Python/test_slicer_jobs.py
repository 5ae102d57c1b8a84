"""The module's background job runner (DeepSimilarity/DeepSimilarityJobs.py): no Qt, no Slicer.

Real subprocesses (tiny ``python -c`` scripts and a real ``deepsim`` command)
and a fake launcher; polled the way the module's QTimer polls them.
"""

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DeepSimilarity"))

import DeepSimilarityJobs as jobs  # noqa: E402


def run_to_end(job, timeout=60.0):
    """Poll like the widget's timer; returns the longest single poll() in seconds."""
    longest, deadline = 0.0, time.monotonic() + timeout
    while True:
        t0 = time.perf_counter()
        running = job.poll()
        longest = max(longest, time.perf_counter() - t0)
        if not running:
            return longest
        assert time.monotonic() < deadline, f"{job.description} did not finish"
        time.sleep(0.02)


def python(script):
    return [sys.executable, "-c", textwrap.dedent(script)]


PROGRESS_SCRIPT = """
    import json, sys, time
    for i in range(5):
        print(json.dumps({"progress": i / 4, "n": i, "total": 4, "desc": "training", "stage": f"epoch {i}"}), flush=True)
        time.sleep(0.05)
    print("wrote result", flush=True)
"""


def test_progress_result_and_cleanup_with_a_real_process():
    seen, cleaned = [], []

    def on_success(job):
        return "done:" + job.stdout[-1]

    job = jobs.Job(python(PROGRESS_SCRIPT), "test job", on_success=on_success, cleanup=lambda: cleaned.append(1))
    assert job.state == "new"
    job.start()
    assert job.running
    while job.poll():
        if job.progress is not None:
            seen.append(job.progress)
        time.sleep(0.01)
    assert job.state == "succeeded" and job.result == "done:wrote result"
    assert job.progress == 1.0 and job.stage == "training epoch 4"
    assert seen == sorted(seen) and seen  # fractions arrive while it runs, never backwards
    assert job.stdout == ["wrote result"]  # progress lines are consumed, not kept as output
    assert cleaned == [1]
    assert job.poll() is False  # polling a finished job is harmless
    with pytest.raises(RuntimeError):
        job.start()


def test_poll_never_blocks_while_the_process_runs():
    script = """
        import time
        for i in range(40):
            print("line", i, flush=True)
            time.sleep(0.02)
        time.sleep(0.5)
    """
    job = jobs.Job(python(script), "chatty").start()
    longest = run_to_end(job)
    assert job.state == "succeeded" and len(job.stdout) == 40
    assert longest < 0.2, f"a poll took {longest:.3f} s: the GUI would freeze"


def test_failure_reports_the_last_stderr_line_and_skips_on_success():
    called, cleaned = [], []
    script = """
        import sys
        print("some output")
        print("Traceback (most recent call last):", file=sys.stderr)
        print("deepsim: error: --ct: file not found", file=sys.stderr)
        print("", file=sys.stderr)
        sys.exit(2)
    """
    job = jobs.Job(python(script), "failing", on_success=called.append, cleanup=lambda: cleaned.append(1)).start()
    run_to_end(job)
    assert job.state == "failed"
    assert job.error == "deepsim: error: --ct: file not found"
    assert called == [] and cleaned == [1]


def test_an_error_while_reading_the_results_fails_the_job():
    def on_success(job):
        raise ValueError("heat map: result file missing")

    job = jobs.Job(python("print('ok')"), "reading", on_success=on_success).start()
    run_to_end(job)
    assert job.state == "failed" and job.error == "heat map: result file missing"


def test_cancel_kills_the_process_and_never_calls_on_success(tmp_path):
    marker = tmp_path / "still-running"
    script = f"""
        import time, pathlib
        print('{{"progress": 0.1, "desc": "slow"}}', flush=True)
        time.sleep(30)
        pathlib.Path({str(marker)!r}).write_text("not killed")
    """
    called, cleaned = [], []
    job = jobs.Job(python(script), "slow", on_success=called.append, cleanup=lambda: cleaned.append(1)).start()
    deadline = time.monotonic() + 20
    while job.progress is None:  # wait until it really runs
        job.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - t0 < 5
    assert job.state == "cancelled" and not job.poll()
    assert job._handle.returncode() is not None  # the process is gone
    assert called == [] and cleaned == [1] and not marker.exists()
    job.cancel()  # a second cancel is harmless


def test_a_missing_executable_fails_cleanly():
    job = jobs.Job(["/nonexistent/python", "-V"], "missing").start()
    assert job.state == "failed" and "could not start" in job.error


class FakeHandle:
    """Plays back lines, then exits with ``code``; records kill()."""

    def __init__(self, lines, code=0, polls_before_exit=2):
        self.lines, self.code, self.left, self.killed = list(lines), code, polls_before_exit, False

    def read_lines(self):
        out, self.lines = self.lines[:1], self.lines[1:]
        return out

    def returncode(self):
        if self.killed:
            return -9
        self.left -= 1
        return self.code if self.left < 0 and not self.lines else None

    def kill(self):
        self.killed = True


def test_a_fake_launcher_replaces_the_process():
    started = []
    progress = json.dumps({"progress": 0.5, "n": 1, "total": 2, "desc": "adding", "stage": ""})
    handle = FakeHandle([("stdout", progress), ("stdout", "not json {"), ("stderr", "a warning")])

    def launcher(args, env):
        started.append((args, env))
        return handle

    job = jobs.Job(["deepsim", "x"], "fake", on_success=lambda j: 42, launcher=launcher, env={"A": "1"}).start()
    assert started == [(["deepsim", "x"], {"A": "1"})]
    job.poll()
    assert job.progress == 0.5 and job.stage == "adding"
    run_to_end(job)
    assert job.state == "succeeded" and job.result == 42
    assert job.stdout == ["not json {"] and job.stderr == ["a warning"]
    # Killing through the launcher's handle.
    slow = FakeHandle([], polls_before_exit=10**6)
    job = jobs.Job(["x"], "fake", launcher=lambda args, env: slow).start()
    job.poll()
    job.cancel()
    assert slow.killed and job.state == "cancelled"


def test_deepsim_command_runs_the_library_with_json_progress(tmp_path):
    """A real, short deepsim run through the job runner: the library's --progress-json lines are parsed."""
    from DeepSimilarityLib.image_io import Volume, write_image

    import numpy as np

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        write_image(Volume((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)), folder / f"c{i}.png")
    from DeepSimilarityLib.retrieval.databases import create_database, open_database
    from DeepSimilarityLib.retrieval.encoders import load_encoder

    db = tmp_path / "cases.db"
    encoder = load_encoder("thumbnail-sign")
    create_database(db, encoder.model_id, encoder.kind, encoder.size, model="thumbnail-sign").close()
    env = jobs.child_environment()
    command = jobs.deepsim_command("index", "add", "--db", db, "--folder", folder)
    assert command[1:4] == ["-m", "DeepSimilarityLib", "--progress-json"]
    fractions = []
    job = jobs.Job(command, "adding", env=env).start()
    while job.poll():
        fractions.append(job.progress)
        time.sleep(0.02)
    assert job.state == "succeeded", job.error
    assert job.progress == 1.0 and "adding" in job.stage
    assert "5 cases added" in job.stdout[-1]
    with open_database(db) as opened:
        assert opened.count() == 5
    assert not any(line.startswith("{") for line in job.stdout + job.stderr)  # no bar text leaked
