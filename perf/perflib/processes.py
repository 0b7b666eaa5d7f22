"""The processes the perf scripts drive: the release build, a fresh local 3-node ringraft
cluster (native and RESP ports on free loopback ports), a local redis-server, and the
machine and commit facts written beside every result.

Owns: starting, readiness (polled with a deadline, never a fixed sleep), and clean stops
(SIGINT, waiting for exit; a node that does not exit in time is killed and reported).
Must not: interpret benchmark results, or leave a process it started running.
"""

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# How long a fresh cluster may take to elect a leader in every group and answer a write.
READY_DEADLINE_S = 60.0
# How long a node may take to hand over its leaderships and exit after SIGINT.
STOP_DEADLINE_S = 60.0
POLL_INTERVAL_S = 0.2
# Fresh clusters tried when a node exits during start-up.
START_ATTEMPTS = 3


class PerfError(Exception):
    """A step of a perf script failed; the message says which and why."""


class NodeExited(PerfError):
    """A server exited on its own (at start-up, most often a port taken meanwhile)."""


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def install_interrupts():
    """Ctrl-C (SIGINT) and SIGTERM both raise KeyboardInterrupt, so a script stops its
    servers on the way out; SIGINT is re-armed even if the parent shell ignored it (a
    background job)."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)


def ignore_interrupts():
    """While the servers stop: a second Ctrl-C must not leave them running half-stopped
    (every stop has its own deadline, after which the process is killed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def say(message):
    print(message, flush=True)


def build_release():
    say("building: cargo build --release")
    result = subprocess.run(["cargo", "build", "--release"], cwd=REPO)
    if result.returncode != 0:
        raise PerfError(f"cargo build --release failed (exit {result.returncode})")


def ringraft_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    binary = target / "release" / "ringraft"
    if not binary.is_file():
        raise PerfError(f"{binary} does not exist; run without --no-build")
    return binary


def git_commit():
    """(short commit, full commit, whether tracked files differ from it)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)

    short = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    full = git("rev-parse", "HEAD").stdout.strip() or "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    return short, full, dirty


def machine_facts():
    facts = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": "unknown CPU",
        "memory_bytes": 0,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    facts["memory_bytes"] = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return facts


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def free_ports(count):
    """`count` distinct loopback ports that were free a moment ago (bound together, so they
    differ, then released for the servers to take)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError as error:
        return f"(cannot read {path}: {error})"


def stop_process(process, name, deadline_s=STOP_DEADLINE_S):
    """SIGINT, then wait up to the deadline; kill if it does not exit. Returns a complaint
    or None when it exited 0 on its own."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"{name} did not exit within {deadline_s:.0f} s of SIGINT; killed"
    if code != 0:
        return f"{name} exited with status {code}"
    return None


class Cluster:
    """Three `ringraft server` processes on loopback, started like `ringraft cluster` does
    (same flags), but on free ports and with `--resp` on every node."""

    def __init__(self, binary, data_dir, cores, nodes=3, extra_args=()):
        self.binary = Path(binary)
        # More `ringraft server` flags for every node (e.g. snapshot settings).
        self.extra_args = list(extra_args)
        self.base_dir = Path(data_dir)
        self.data_dir = self.base_dir
        self.cores = cores
        self.nodes = nodes
        self.processes = []
        self.logs = []
        self.peer_ports = self.client_ports = self.resp_ports = []

    def start_ready(self, attempts=START_ATTEMPTS):
        """Starts the nodes and waits until they are ready. Ports are free when chosen but
        another process may take one before a node binds it; when a node exits during
        start-up, the others are stopped and a fresh cluster tries new ports."""
        for attempt in range(1, attempts + 1):
            self.data_dir = self.base_dir if attempt == 1 else \
                self.base_dir.with_name(f"{self.base_dir.name}-{attempt}")
            try:
                self.start()
                self.wait_ready()
                return
            except NodeExited as error:
                complaints = self.stop()
                if attempt == attempts:
                    raise
                say(f"start-up attempt {attempt} failed, trying new ports: {error} "
                    f"{' '.join(complaints)}")

    @property
    def endpoints(self):
        return ",".join(f"127.0.0.1:{port}" for port in self.client_ports)

    def start(self):
        ports = free_ports(3 * self.nodes)
        self.peer_ports = ports[:self.nodes]
        self.client_ports = ports[self.nodes:2 * self.nodes]
        self.resp_ports = ports[2 * self.nodes:]
        self.processes, self.logs = [], []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.nodes):
            self.processes.append(None)
            self.logs.append(self.data_dir / f"node-{index + 1}.log")
            self.start_node(index)
        say(f"cluster: {self.nodes} nodes, clients {self.endpoints}, RESP ports "
            f"{','.join(map(str, self.resp_ports))}, data {self.data_dir}")

    def start_node(self, index):
        """Starts node `index + 1` (again) on its ports and data directory; its log grows."""
        peers = ",".join(f"{i + 1}=127.0.0.1:{port}" for i, port in enumerate(self.peer_ports))
        node = index + 1
        command = [
            str(self.binary), "server",
            "--node-id", str(node),
            "--peers", peers,
            "--client", f"127.0.0.1:{self.client_ports[index]}",
            "--resp", f"127.0.0.1:{self.resp_ports[index]}",
            "--data-dir", str(self.data_dir / f"node-{node}"),
            "--cores", str(self.cores),
            *self.extra_args,
        ]
        with open(self.logs[index], "ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches this script only,
            # which then stops the nodes itself, once.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=log,
                                       start_new_session=True)
        self.processes[index] = process
        return process

    def stop_node(self, index):
        """Stops node `index + 1` (SIGINT, waiting for its exit); returns a complaint or None."""
        process = self.processes[index]
        self.processes[index] = None
        if process is None:
            return None
        return stop_process(process, f"node {index + 1}")

    def check_alive(self):
        for node, (process, log) in enumerate(zip(self.processes, self.logs), start=1):
            if process is None:
                continue
            code = process.poll()
            if code is not None:
                raise NodeExited(f"node {node} exited ({code}); last lines of {log}:\n"
                                 f"{tail(log)}")

    def status(self, endpoint):
        """(groups with a known leader, groups, nodes up, nodes) as one node sees them, or
        None if it does not answer yet."""
        result = subprocess.run(
            [str(self.binary), "status", "--endpoints", endpoint, "--timeout-ms", "1000"],
            capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            return None
        return parse_status(result.stdout)

    def wait_ready(self, deadline_s=READY_DEADLINE_S):
        """Polls `ringraft status` on every node until each sees a leader in every group and
        every node up, then writes one key through each node."""
        deadline = time.monotonic() + deadline_s
        pending = [f"127.0.0.1:{port}" for port in self.client_ports]
        last = {}
        while pending:
            self.check_alive()
            if time.monotonic() > deadline:
                raise PerfError(f"no leader in every group within {deadline_s:.0f} s; last "
                                f"status per node: {last}")
            endpoint = pending[0]
            seen = self.status(endpoint)
            last[endpoint] = seen
            if seen is not None and seen[0] == seen[1] > 0 and seen[2] == seen[3] == self.nodes:
                pending.pop(0)
            else:
                time.sleep(POLL_INTERVAL_S)
        for port in self.client_ports:
            self.put_until_ok(f"127.0.0.1:{port}", deadline)
        say("cluster: every group has a leader; a write through each node succeeded")

    def settle(self, deadline_s=READY_DEADLINE_S):
        """Polls `ringraft status` until every node has applied everything committed and all
        nodes agree on each group's leader and commit index, so that a run does not start
        while the one before it is still being applied. Returns the seconds it took."""
        started = time.monotonic()
        endpoints = [f"127.0.0.1:{port}" for port in self.client_ports]
        last = None
        while True:
            self.check_alive()
            views = []
            for endpoint in endpoints:
                result = subprocess.run(
                    [str(self.binary), "status", "--endpoints", endpoint, "--timeout-ms", "1000"],
                    capture_output=True, text=True, timeout=30)
                views.append(parse_groups(result.stdout) if result.returncode == 0 else None)
            if quiescent(views):
                return time.monotonic() - started
            last = views
            if time.monotonic() - started > deadline_s:
                raise PerfError(f"the cluster did not settle within {deadline_s:.0f} s "
                                f"(every node applied, same commit); last views: {last}")
            time.sleep(POLL_INTERVAL_S)

    def put_until_ok(self, endpoint, deadline):
        while True:
            result = subprocess.run(
                [str(self.binary), "put", "perf:ready", "1", "--endpoints", endpoint],
                capture_output=True, text=True, timeout=30)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PerfError(f"a write through {endpoint} kept failing: "
                                f"{result.stderr.strip()}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self):
        """Stops every node (SIGINT to all, then waits); returns complaints, empty if all
        exited cleanly."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
        complaints = []
        for node, process in enumerate(self.processes, start=1):
            if process is None:
                continue
            complaint = stop_process(process, f"node {node}")
            if complaint:
                complaints.append(f"{complaint}; see {self.logs[node - 1]}")
        self.processes = []
        return complaints


def parse_status(text):
    """Counts from `ringraft status` output: (groups with a leader, groups, nodes up, nodes)."""
    groups = led = up = nodes = 0
    for line in text.splitlines():
        words = line.split()
        if len(words) == 6 and words[0].isdigit():
            groups += 1
            if words[1] != "-":
                led += 1
        elif len(words) == 3 and words[0] == "node":
            nodes += 1
            if words[2] == "up":
                up += 1
    return led, groups, up, nodes


def parse_groups(text):
    """{group: (leader, commit, applied)} from `ringraft status` output; leader is None
    while unknown."""
    groups = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 6 and words[0].isdigit() and words[3].isdigit() and words[4].isdigit():
            leader = None if words[1] == "-" else words[1]
            groups[int(words[0])] = (leader, int(words[3]), int(words[4]))
    return groups


def quiescent(views):
    """True when every node answered, knows a leader for every group, has applied all it
    committed, and all nodes agree on each group's leader and commit index."""
    if not views or any(not view for view in views):
        return False
    if any(view.keys() != views[0].keys() for view in views):
        return False
    for group in views[0]:
        seen = {view[group][:2] for view in views}
        if len(seen) != 1 or None in (view[group][0] for view in views):
            return False
        if any(view[group][1] != view[group][2] for view in views):
            return False
    return True


class RedisServer:
    """A local redis-server that syncs every write: appendonly yes, appendfsync always, no
    snapshots, its files in a temporary directory."""

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self.port = free_ports(1)[0]
        self.process = None
        self.log = self.data_dir / "redis.log"

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                   "--dir", str(self.data_dir), "--logfile", str(self.log)]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        except FileNotFoundError as error:
            raise PerfError("redis-server is not installed (apt-get install redis-server)") \
                from error
        say(f"redis-server: port {self.port}, appendonly yes, appendfsync always, "
            f"dir {self.data_dir}")

    def wait_ready(self, deadline_s=READY_DEADLINE_S):
        deadline = time.monotonic() + deadline_s
        while True:
            if self.process.poll() is not None:
                raise PerfError(f"redis-server exited ({self.process.returncode}):\n"
                                f"{tail(self.log)}")
            try:
                if resp_command(self.port, ["PING"]) == "PONG":
                    return
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                raise PerfError(f"redis-server did not answer PING within {deadline_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)

    def stop(self):
        if self.process is None:
            return []
        complaint = stop_process(self.process, "redis-server")
        self.process = None
        return [complaint] if complaint else []


class RespError(Exception):
    """An error reply (`-ERR ...`) or a malformed answer from a RESP server."""


def resp_command(port, arguments, timeout_s=10.0):
    """Sends one command to a RESP server on loopback and returns its reply (str, int, None
    or list); an error reply raises RespError with the server's text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        request = [f"*{len(arguments)}\r\n".encode()]
        for argument in arguments:
            data = argument.encode() if isinstance(argument, str) else argument
            request.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
        sock.sendall(b"".join(request))
        reader = sock.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise RespError(f"connection closed mid-reply: {line!r}")
    kind, body = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return body
    if kind == b"-":
        raise RespError(body)
    try:
        number = int(body)
    except ValueError as error:
        raise RespError(f"malformed reply line {line!r}") from error
    if kind == b":":
        return number
    if kind == b"$":
        if number < 0:
            return None
        data = reader.read(number + 2)
        if len(data) != number + 2:
            raise RespError("connection closed inside a bulk reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        if number < 0:
            return None
        return [_read_reply(reader) for _ in range(number)]
    raise RespError(f"unknown reply type {line!r}")


def fail(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1
