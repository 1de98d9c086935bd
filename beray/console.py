"""beray's console: its own lines on the terminal, everything Ray prints in a log file.

A command runs inside ``session(command)``. When it starts Ray (``runtime.init_ray``), the session
points the process's standard output and error, file descriptors 1 and 2 and ``sys.stdout`` /
``sys.stderr`` alike, at a log file: Ray's loggers, the raylet's warnings (which Ray's error
subscriber prints whatever ``log_to_driver`` says), deprecation warnings, the C++ core worker's
messages and the output of every process the driver starts all land there. beray writes its own
lines with ``say``, to the terminal kept aside. At the end the session names the log in one line;
``--verbose`` (``session(..., verbose=True)``) leaves everything on the terminal instead.

Outside a session (a library call, a test) ``say`` is ``print``.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LOG_NAME = "ray.log"


class Session:
    def __init__(self, command: str, verbose: bool):
        self.command, self.verbose = command, verbose
        self.log_path: Path | None = None  # where Ray's output goes; None: beside Ray's own session logs
        self.started_ray = False  # this command started (or joined) Ray: it disconnects before the terminal returns
        self.out: TextIO | None = None  # the terminal, while Ray's output goes to the log
        self.err: TextIO | None = None
        self._saved: tuple | None = None

    def log_in(self, folder: str | os.PathLike) -> None:
        """Write Ray's output to ``folder/ray.log`` (a local folder; a URI keeps the default)."""
        if "://" not in str(folder):
            self.log_path = Path(folder).expanduser() / LOG_NAME

    def begin(self) -> None:
        """Send what the process prints from now on to the log; beray's lines keep the terminal."""
        if self.verbose or self._saved is not None:
            return
        if self.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.log_path = Path(tempfile.gettempdir()) / "ray" / f"beray-{self.command}-{stamp}-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} python -m beray.{self.command} (pid {os.getpid()})\n")
        sys.stdout.flush()
        sys.stderr.flush()
        fds = (os.dup(1), os.dup(2))
        self.out, self.err = _terminal(sys.stdout, fds[0]), _terminal(sys.stderr, fds[1])
        self._saved = (fds, sys.stdout, sys.stderr, log)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log

    def end(self) -> None:
        """Disconnect from a Ray this command started, give the terminal back and name the log."""
        if self._saved is None:
            return
        if self.started_ray:
            import ray

            ray.shutdown()  # its threads would print to the terminal once it is back
        fds, out, err, log = self._saved
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        sys.stdout, sys.stderr = out, err
        for stream in (self.out, self.err):
            if stream not in (out, err):
                stream.close()
        os.close(fds[0])
        os.close(fds[1])
        log.close()
        self._saved, self.out, self.err = None, None, None
        print(f"Ray's log: {self.log_path} (--verbose shows it live)", file=sys.stderr, flush=True)


def _terminal(stream: TextIO, fd: int) -> TextIO:
    """A stream that still reaches where ``stream`` went once descriptors 1 and 2 point at the log:
    a new one over ``fd`` (a copy of the old descriptor), or ``stream`` itself when it has no
    descriptor (pytest's capture)."""
    try:
        stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return stream
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="backslashreplace")


_session: Session | None = None


@contextmanager
def session(command: str, verbose: bool = False):
    """The console of one ``python -m beray.COMMAND``: see the module's docstring."""
    global _session
    previous, _session = _session, Session(command, verbose)
    try:
        yield _session
    finally:
        current, _session = _session, previous
        current.end()


def current() -> Session | None:
    return _session


def out() -> TextIO:
    """Where beray's own lines go: the terminal, even while Ray's output goes to the log."""
    return (_session and _session.out) or sys.stdout


def err() -> TextIO:
    return (_session and _session.err) or sys.stderr


def say(*parts, error: bool = False, end: str = "\n", sep: str = " ") -> None:
    """``print`` for beray's lines: on the terminal (stderr with ``error``), flushed."""
    print(*parts, sep=sep, end=end, file=err() if error else out(), flush=True)
