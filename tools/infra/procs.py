"""Process and port helpers shared by the local Kafka and Redis launchers.

Servers are detached (own session, output to a file) so they outlive the `dev up`
command that started them; a pid file is the only link back to them, so every check
here guards against stale pid files and recycled pids.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipeline.settings import ConfigError


class InfraError(ConfigError):
    """A local server could not be installed, started or stopped.

    Subclasses ConfigError so the CLI prints the message (which names the setting or
    command that fixes it) instead of a traceback.
    """


# Children started by this interpreter: polling the Popen reaps them, otherwise a
# stopped server would linger as a zombie that still looks alive to os.kill(pid, 0).
_children: dict[int, subprocess.Popen[bytes]] = {}


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Fail early with the setting to change, instead of a bind error buried in a server log.

    Binding (not connecting) decides: it tells "in use" from "not an address of this
    machine", and a connect can succeed through a transparent proxy.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InfraError(f"{what}: host {host!r} does not resolve; fix the host in {setting}") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InfraError(
                    f"{what}: port {port} on {host} is already in use by another process (not one "
                    f"started by `dev up`); stop that process or choose another port in {setting}"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InfraError(
                    f"{what}: {host} is not an address of this machine, so a local server cannot "
                    f"listen there; point {setting} at 127.0.0.1 for `dev up`"
                ) from None
            raise InfraError(
                f"{what}: cannot listen on {host}:{port} ({e.strerror}); choose another port in {setting}"
            ) from None


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll predicate until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def read_pid_address(path: Path) -> str | None:
    """The host:port the server was started on, which the settings may no longer name."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    return lines[1].strip() if len(lines) > 1 and lines[1].strip() else None


def write_pid(path: Path, pid: int, address: str) -> None:
    """Pid on the first line (so `kill $(head -1 FILE)` works), listen address on the second."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n{address}\n")
    tmp.replace(path)


def remove_pid(path: Path) -> None:
    path.unlink(missing_ok=True)


def is_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when pid runs and (where /proc exists) its command line contains marker.

    The marker check stops a stale pid file from claiming an unrelated process that
    reused the pid after a reboot.
    """
    if pid is None or pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        # Our own child: poll() is exact, and the marker check could misfire while the
        # server rewrites its process title (Redis does, at start-up).
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no procfs (macOS): trust kill(0)
    try:
        stat = (proc / "stat").read_text()
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
        if marker is not None:
            return marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return True


def start_detached(argv: Sequence[str], log_path: Path, cwd: Path | None = None, secrets: Sequence[str] = ()) -> int:
    """Start argv in its own session, output appended to log_path; returns the pid.

    Own session: Ctrl-C in the `dev up` terminal or the end of the starting process must
    not take the server down with it. `secrets` are masked in the command line we log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join("***" if a in secrets else a for a in argv)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise InfraError(f"cannot run {argv[0]}: {e.strerror}") from None
    _children[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            _children[pid] = child


def stop_process(pid: int, timeout_s: float, marker: str | None = None) -> bool:
    """SIGTERM, then SIGKILL after timeout_s; returns True when it stopped cleanly."""
    if not is_alive(pid, marker):
        return True
    _signal_group(pid, signal.SIGTERM)
    if wait_until(lambda: not is_alive(pid, marker), timeout_s):
        _reap(pid)
        return True
    kill_process(pid, marker)
    return False


def kill_process(pid: int, marker: str | None = None, timeout_s: float = 10) -> None:
    """SIGKILL and wait for the process to be gone (a crash, for fault tests)."""
    if not is_alive(pid, marker):
        return
    _signal_group(pid, signal.SIGKILL)
    if not wait_until(lambda: not is_alive(pid, marker), timeout_s):
        raise InfraError(f"process {pid} survived SIGKILL for {timeout_s:.0f} s; check `ps -p {pid}`")
    _reap(pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The server leads its own session/group (start_new_session); signalling the group
    # also reaches anything it forked. Fall back to the pid if it is not a group leader.
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log, for error messages that explain why a server died."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Exclusive lock so two concurrent `dev up`s or test workers don't start or download twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InfraError(
                        f"{what}: another process kept {path} locked for {timeout_s:.0f} s "
                        "(a concurrent `dev up` or test run); wait for it to finish and retry"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LocalServer:
    """Pid-file bookkeeping shared by LocalKafka and LocalRedis.

    Subclasses set the class attributes and implement start(); the pid file in the data
    dir is the only record of a server started by an earlier `dev up`.
    """

    name: str = ""  # "kafka", "redis": first word of status lines
    setting: str = ""  # the environment variable that holds the address
    marker: str = ""  # substring of the server's command line, against recycled pids

    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.dir = Path(data_dir) / self.name
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return self.name

    def start(self, timeout_s: float = 30) -> None:
        """Start the server unless it already runs, and wait until it is ready."""
        raise NotImplementedError

    def pid(self) -> int | None:
        """Pid of our server if it is alive, whatever address it listens on."""
        pid = read_pid(self.pid_file)
        return pid if is_alive(pid, self.marker) else None

    def running_address(self) -> str:
        return read_pid_address(self.pid_file) or self.address

    def is_running(self) -> bool:
        """Our server is alive and listening where the settings point."""
        return self.pid() is not None and self.running_address() == self.address and port_open(self.host, self.port)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM for a clean shutdown (Kafka then skips log recovery on the next start),
        SIGKILL after timeout_s; a no-op when stopped."""
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_process(pid, timeout_s, self.marker)
        remove_pid(self.pid_file)

    def kill(self) -> None:
        """SIGKILL with no shutdown, to test how the pipeline copes with a crash."""
        pid = read_pid(self.pid_file)
        if pid is not None:
            kill_process(pid, self.marker)
        remove_pid(self.pid_file)

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            other = " (port in use by another process)" if port_open(self.host, self.port) else ""
            return f"{self.label}: stopped{other}, address {self.address}, data {self.dir}"
        at = self.running_address()
        if at != self.address:
            return (f"{self.label}: running (pid {pid}) at {at}, but {self.setting} now says {self.address}; "
                    "run `dev down`, then `dev up`")
        state = "running" if port_open(self.host, self.port) else "starting"
        return f"{self.label}: {state} (pid {pid}) at {self.address}, data {self.dir}"

    def _start_lock(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        return file_lock(self.dir / "start.lock", timeout_s, f"{self.name} start")

    def _check_same_address(self, pid: int) -> None:
        at = self.running_address()
        if at != self.address:
            raise InfraError(
                f"{self.name} from `dev up` still runs at {at} (pid {pid}) but {self.setting} now "
                f"names {self.address}; run `python -m pipeline dev down`, then `dev up`"
            )

    def _launch(
        self, argv: Sequence[str], ready: Callable[[], bool], deadline: float, secrets: Sequence[str] = ()
    ) -> None:
        """Start argv detached, record it, and wait for ready(); on failure leave nothing behind."""
        pid = start_detached(argv, self.log_file, cwd=self.dir, secrets=secrets)
        write_pid(self.pid_file, pid, self.address)
        try:
            self._wait_ready(pid, ready, deadline)
        except BaseException:
            stop_process(pid, 10, self.marker)
            remove_pid(self.pid_file)
            raise

    def _wait_ready(self, pid: int, ready: Callable[[], bool], deadline: float) -> None:
        while True:
            if not is_alive(pid, self.marker):
                raise InfraError(
                    f"{self.name} exited during startup; last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise InfraError(
                    f"{self.name} at {self.address} was not ready in time; see {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.1)
