"""Long computations in a background process: start, poll, progress, cancel. No Qt, no Slicer.

Training, registration, adding a folder to a case database and slow heat maps run
as the ``deepsim`` command line in a separate Python process (the way
SlicerMONAIAuto3DSeg and SlicerNNUnet run their inference): Slicer's GUI thread
only polls it, so the application never freezes, and killing the process is a
clean Cancel (the library writes its outputs atomically, and the scene is only
touched once the process has succeeded).

A :class:`Job` is polled by its owner (the module widget, from a ``qt.QTimer``;
tests, from a loop). Processes come from a *launcher*, injected so that tests
can replace it: any callable ``launcher(args, env) -> handle`` where ``handle``
has ``read_lines() -> [(stream, line)]`` (non-blocking), ``returncode()``
(None while running) and ``kill()``.
"""

import os
import queue
import shutil
import subprocess
import sys
import threading

# Prefix of the JSON progress lines written by ``deepsim --progress-json``
# (DeepSimilarityLib.progress.JSON_PREFIX; repeated so that this file needs no library import).
PROGRESS_PREFIX = '{"progress"'


def python_executable() -> str:
    """The Python that runs ``deepsim``: Slicer's own (PythonSlicer) inside Slicer, else this one.

    Inside the Slicer application ``sys.executable`` is not a plain Python
    interpreter on every platform; ``PythonSlicer`` (next to the Slicer
    executable, on the launcher's PATH) is the Python with Slicer's packages.
    """
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def library_root() -> str:
    """The folder holding the DeepSimilarityLib package (for the child's PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("DeepSimilarityLib")
    if spec is None or not spec.origin:
        raise ValueError("DeepSimilarityLib: the library cannot be found on sys.path")
    return os.path.dirname(os.path.dirname(spec.origin))


def deepsim_command(*args) -> list:
    """``python -m DeepSimilarityLib --progress-json ARGS``: the command line as a list."""
    return [python_executable(), "-m", "DeepSimilarityLib", "--progress-json", *[str(a) for a in args]]


def child_environment(extra=None) -> dict:
    """This process's environment with the library importable and output unbuffered."""
    env = dict(os.environ)
    root = library_root()
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are written
    env.update(extra or {})
    return env


class ProcessHandle:
    """A running subprocess whose output lines are collected by two reader threads."""

    def __init__(self, args, env=None, cwd=None):
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1)
        self._lines = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr"))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name):
        for line in stream:
            self._lines.put((name, line.rstrip("\r\n")))
        stream.close()

    def read_lines(self) -> list:
        """Every line received since the last call; never waits (but for the last lines after exit)."""
        if self._process.poll() is not None:
            for reader in self._readers:  # the process is gone: its last lines are moments away
                reader.join(timeout=1.0)
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def returncode(self):
        return self._process.poll()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)


def launch_process(args, env=None) -> ProcessHandle:
    """The default launcher: a real subprocess."""
    return ProcessHandle(args, env=env)


class Job:
    """One background command and what to do with its results.

    ``on_success(job)`` runs (in the poller's thread, i.e. Slicer's main thread)
    once the process has exited with status 0; it reads the result files and
    updates the scene. ``cleanup()`` runs once at the end in every case (e.g.
    removes the temporary folder). States: ``new``, ``running``, ``succeeded``,
    ``failed`` (``error`` holds one line: the last line of stderr, or what
    ``on_success`` raised) and ``cancelled``. ``progress`` is the fraction done
    (None until the process reports one), ``stage`` the current step's text.
    """

    def __init__(self, args, description="computation", on_success=None, cleanup=None, launcher=None, env=None):
        self.args = list(args)
        self.description = description
        self.on_success = on_success
        self._cleanup = cleanup
        self.launcher = launcher or launch_process
        self.env = env
        self.state = "new"
        self.progress = None
        self.stage = ""
        self.stdout = []
        self.stderr = []
        self.error = ""
        self.result = None
        self._handle = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    def start(self) -> "Job":
        if self.state != "new":
            raise RuntimeError(f"job {self.description!r} was started already")
        try:
            self._handle = self.launcher(self.args, self.env)
        except OSError as exc:
            self._fail(f"could not start {self.args[0]}: {exc}")
            return self
        self.state = "running"
        return self

    def poll(self) -> bool:
        """Read what the process wrote and handle its end; True while it still runs."""
        if self.state != "running":
            return False
        for stream, line in self._handle.read_lines():
            self._take(stream, line)
        code = self._handle.returncode()
        if code is None:
            return True
        for stream, line in self._handle.read_lines():
            self._take(stream, line)
        if code != 0:
            self._fail(self._last_error() or f"{self.description} stopped with exit status {code}")
            return False
        try:
            if self.on_success is not None:
                self.result = self.on_success(self)
        except Exception as exc:  # reported as the job's one error line, like a failing process
            self._fail(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))
            return False
        self.state = "succeeded"
        self.progress = 1.0
        self._finish()
        return False

    def cancel(self) -> None:
        """Kill the process; ``on_success`` is never called, so the scene stays as it was."""
        if self.state != "running":
            return
        self._handle.kill()
        self.state = "cancelled"
        self._finish()

    def _take(self, stream, line):
        if stream == "stdout" and line.startswith(PROGRESS_PREFIX):
            import json

            try:
                data = json.loads(line)
            except ValueError:
                data = None
            if isinstance(data, dict):
                if data.get("progress") is not None:
                    self.progress = float(data["progress"])
                self.stage = " ".join(str(data.get(k) or "") for k in ("desc", "stage")).strip()
                return
        (self.stdout if stream == "stdout" else self.stderr).append(line)

    def _last_error(self) -> str:
        for line in reversed(self.stderr):
            if line.strip():
                return line.strip()
        return ""

    def _fail(self, message):
        self.state = "failed"
        self.error = message
        self._finish()

    def _finish(self):
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
