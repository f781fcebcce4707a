"""The operator's path for real: three hosts as network namespaces on this machine (a bridge, a veth pair and an
IP each), Ray started on them with token authentication the way `deploy/azure/cluster.yaml` starts it, the run
submitted with `ray job submit ... -- tessera-pipeline run ... --address auto` as docs/operations.md tells
operators, one worker host's processes SIGKILLed mid-run, and a host without the token refused.

Needs root (or CAP_NET_ADMIN) for `ip netns` and Ray's dashboard (`ray[default]`) for the job API; skipped with
the reason otherwise. Select it with `-m netns`.

Test-only deviations from a real cluster, each forced by running three "hosts" on one machine:
- `--node-ip-address`: inside a namespace Ray cannot find its IP (no route out), a VM's Ray can;
- `--temp-dir` and `HOME` per host: the hosts share one filesystem, so Ray's session directories and each
  host's `~/.ray/auth_token` would otherwise collide (and root's own token would leak into every host);
- small `--num-cpus` / `--object-store-memory`, so three nodes fit on a 2-core box;
- the submitter runs inside the head's namespace and uses its 127.0.0.1:8265, standing in for the SSH tunnel
  (`ray dashboard cluster.yaml`) that ends on the head's loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tessera_pipeline.run.status import run_status
from tessera_pipeline.store import TileStore
from run_support import YEAR, assert_complete_once, make_inputs, small_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
#: Eight land tiles near Manchester, 16 x 16 synthetic pixels each: about a second per tile on one core. The worker
#: host that commits first is killed then, with its next tile in flight (window 2) and most of the run still to do.
TILES = [f"grid_{lon}_{lat}" for lat in ("53.25", "53.35") for lon in ("-1.75", "-1.65", "-1.55", "-1.45")]
SIZE = (16, 16)
GCS_PORT = 6379
DASHBOARD = "http://127.0.0.1:8265"
OBJECT_STORE = 100 * 1000 * 1000
#: What Ray's GCS answers a node that presents no token or the wrong one.
REFUSED = "InvalidAuthToken: Authentication token is missing or incorrect"


@dataclass
class Host:
    role: str
    ns: str
    ip: str
    home: Path
    temp_dir: Path


@dataclass
class Hosts:
    """The namespaces of one test run, and how to run commands on them."""

    pid: int
    root: Path  # short: Ray's unix socket paths under each --temp-dir must stay under 107 characters
    subnet: str
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        """A clean environment for a process on `host`: the venv first on PATH, the host's own HOME."""
        return {"PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(host.home),
                "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **extra}

    def cmd(self, host: Host, *args: str) -> list[str]:
        return ["ip", "netns", "exec", host.ns, *args]

    def run(self, host: Host, *args: str, env: dict[str, str], timeout: float, label: str = "") -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.cmd(host, *args), env=env, capture_output=True, text=True, timeout=timeout)
        self.outputs[label or f"{host.role}: {' '.join(args[:3])}"] = out.stdout + out.stderr
        return out

    def popen(self, host: Host, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(self.cmd(host, *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def kill_all(self, host: Host) -> int:
        """SIGKILL every process in the host's namespace until none is left; returns how many were killed."""
        killed = 0
        for _ in range(50):
            pids = self.pids(host)
            if not pids:
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"processes of {host.ns} survive SIGKILL: {self.pids(host)}")

    def pids(self, host: Host) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def diagnostics(self) -> str:
        """Every command's output we kept, then the last lines of each host's Ray logs."""
        parts = [f"===== {label}\n{text[-6000:]}" for label, text in self.outputs.items()]
        for host in self.hosts.values():
            logs = host.temp_dir / "session_latest" / "logs"
            for name in ("gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err", "dashboard.log"):
                path = logs / name
                if path.exists():
                    lines = path.read_text(errors="replace").splitlines()[-25:]
                    parts.append(f"===== {host.role} {name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """head (.10), w1 (.11), w2 (.12) and an outsider (.13) on a bridge; everything removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to create network namespaces")
    if importlib.util.find_spec("aiohttp_cors") is None:
        pytest.skip("`ray job submit` needs Ray's dashboard: pip install 'ray[default]' (the dev extra has it)")
    for tool in ("ray", "tessera-pipeline"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not installed next to {sys.executable}")
    pid = os.getpid()
    subnet = f"10.77.{20 + pid % 200}"
    h = Hosts(pid=pid, root=Path(tempfile.mkdtemp(prefix="tsop", dir="/tmp")), subnet=subnet, bridge=f"tsb{pid}")
    made_bridge = False
    try:
        try:
            _sh("ip", "netns", "add", f"tsop{pid}-head")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"network namespaces are not permitted here (`ip netns add`: {exc.stderr.strip()})")
        try:
            _sh("ip", "link", "add", h.bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a bridge here (`ip link add type bridge`: {exc.stderr.strip()})")
        made_bridge = True
        _sh("ip", "addr", "add", f"{subnet}.1/24", "dev", h.bridge)
        _sh("ip", "link", "set", h.bridge, "up")
        for i, role in enumerate(("head", "w1", "w2", "outsider")):
            ns, veth = f"tsop{pid}-{role}", f"tsv{pid}{i}"
            if role != "head":
                _sh("ip", "netns", "add", ns)
            host = Host(role, ns, f"{subnet}.{10 + i}", h.root / role / "home", h.root / role / "ray")
            h.hosts[role] = host
            host.home.mkdir(parents=True)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", h.bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield h
    finally:
        for role in ("head", "w1", "w2", "outsider"):
            host = h.hosts.get(role)
            ns = host.ns if host else f"tsop{pid}-{role}"
            if host:
                try:
                    h.kill_all(host)
                except AssertionError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth end goes with it
        if made_bridge:
            subprocess.run(["ip", "link", "del", h.bridge], capture_output=True)
        shutil.rmtree(h.root, ignore_errors=True)


def _nodes(h: Hosts, client_env: dict[str, str]) -> list[dict]:
    out = h.run(h.hosts["head"], "ray", "list", "nodes", "--address", DASHBOARD, "--format", "json", "--limit", "100",
                env=client_env, timeout=60, label="ray list nodes")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _wait_for_nodes(h: Hosts, client_env: dict[str, str], ips: set[str], timeout: float) -> dict[str, str]:
    """Wait until the nodes at `ips` are alive; returns node IP -> node id."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {n["node_ip"]: n["node_id"] for n in _nodes(h, client_env) if n["state"] == "ALIVE"}
        if ips <= set(alive) or time.monotonic() > deadline:
            assert ips <= set(alive), f"nodes alive: {sorted(alive)}, expected {sorted(ips)}"
            return alive
        time.sleep(1.0)


def _committed_by(store: TileStore) -> dict[str, str]:
    """Committed tile -> the node id its marker records."""
    done = {}
    for key in store.list_complete(YEAR):
        marker = store.marker(YEAR, key.tile)
        if marker is not None:
            done[key.tile] = marker["provenance"]["node_id"]
    return done


def test_operator_path_three_hosts_token_auth_worker_host_killed(hosts: Hosts, tmp_path: Path) -> None:
    h = hosts
    head, w1, w2, outsider = (h.hosts[r] for r in ("head", "w1", "w2", "outsider"))
    try:
        _operator_path(h, head, w1, w2, outsider, tmp_path)
    except BaseException:
        print(h.diagnostics())
        raise


def _operator_path(h: Hosts, head: Host, w1: Host, w2: Host, outsider: Host, tmp_path: Path) -> None:
    t0 = time.monotonic()
    # The shared filesystem every host mounts at the same place: inputs, checkpoint, store.
    make_inputs(tmp_path / "inputs", TILES, size=SIZE)
    small_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "tiles.txt").write_text("\n".join(TILES) + "\n")
    store_url = str(tmp_path / "store.zarr")

    # The token, as setup-node.sh leaves it on every node (~/.ray/auth_token); the nodes start as cluster.yaml's
    # head_start_ray_commands / worker_start_ray_commands do: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...
    token = secrets.token_hex(32)
    for host in (head, w1, w2):
        (host.home / ".ray").mkdir()
        (host.home / ".ray" / "auth_token").write_text(token)
    node_env = {host.role: h.env(host, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(host.home / ".ray" / "auth_token"))
                for host in (head, w1, w2)}
    # The operator's shell (docs/operations.md, "Submit the run"): export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=...
    client_home = h.root / "client"
    client_home.mkdir()
    client_env = {**h.env(head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), "HOME": str(client_home)}

    out = h.run(head, "ray", "start", "--head", f"--port={GCS_PORT}", f"--node-ip-address={head.ip}",
                "--dashboard-host=127.0.0.1", "--disable-usage-stats", "--num-cpus=0",
                f"--object-store-memory={OBJECT_STORE}", f"--temp-dir={head.temp_dir}",
                env=node_env["head"], timeout=120, label="ray start --head")
    assert out.returncode == 0, out.stderr[-3000:]
    starting = {host.role: h.popen(host, "ray", "start", f"--address={head.ip}:{GCS_PORT}", f"--node-ip-address={host.ip}",
                                   "--disable-usage-stats", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE}",
                                   f"--temp-dir={host.temp_dir}", env=node_env[host.role])
                for host in (w1, w2)}
    for role, proc in starting.items():
        text, _ = proc.communicate(timeout=120)
        h.outputs[f"ray start ({role})"] = text
        assert proc.returncode == 0, text[-3000:]
    node_ids = _wait_for_nodes(h, client_env, {head.ip, w1.ip, w2.ip}, timeout=60)
    started = time.monotonic()

    # The dashboard (job API) listens on the head's loopback only, never on its cluster address.
    with pytest.raises(OSError):
        socket.create_connection((head.ip, 8265), timeout=2).close()
    # ... and even there it answers nobody without the token.
    anon = h.run(head, "ray", "job", "list", "--address", DASHBOARD, env={**h.env(head), "HOME": str(client_home)},
                 timeout=60, label="ray job list without the token")
    assert anon.returncode != 0 and "Unauthorized" in anon.stdout + anon.stderr, (anon.stdout + anon.stderr)[-2000:]

    # A host without the token tries to join while the run goes on (each try is ~20 s of Ray's GCS retries):
    # one with token mode on and a wrong token, one as an outsider would (no RAY_AUTH_MODE, no token file).
    intruders = {
        "wrong token": h.popen(outsider, "ray", "start", f"--address={head.ip}:{GCS_PORT}", f"--node-ip-address={outsider.ip}",
                               "--disable-usage-stats", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE}",
                               f"--temp-dir={outsider.temp_dir}-a",
                               env=h.env(outsider, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))),
        "no token": h.popen(outsider, "ray", "start", f"--address={head.ip}:{GCS_PORT}", f"--node-ip-address={outsider.ip}",
                            "--disable-usage-stats", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE}",
                            f"--temp-dir={outsider.temp_dir}-b", env=h.env(outsider)),
    }

    # Submit exactly as docs/operations.md does (region by tile list instead of --global).
    sub_id = f"tessera-netns-{h.pid}"
    out = h.run(head, "ray", "job", "submit", "--address", DASHBOARD, "--submission-id", sub_id, "--no-wait", "--",
                "tessera-pipeline", "run", "--input", str(tmp_path / "inputs"), "--store", store_url,
                "--checkpoint", str(tmp_path / "ckpt.pt"), "--year", str(YEAR), "--tiles", str(tmp_path / "tiles.txt"),
                "--address", "auto", env=client_env, timeout=120, label="ray job submit")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]

    # Mid-run: the first worker host to commit a tile (its actor is up and holds the next tile) loses every process
    # to SIGKILL. Which of w1 and w2 that is depends on whose actor started first; the other one must finish the run.
    store = TileStore(store_url)
    workers = {node_ids[w1.ip]: (w1, w2), node_ids[w2.ip]: (w2, w1)}
    deadline = time.monotonic() + 120
    while True:
        done = _committed_by(store) if (Path(store_url) / "_commits").exists() else {}
        if done:
            break
        assert time.monotonic() < deadline, "no tile committed in 120 s"
        time.sleep(0.1)
    assert set(done.values()) <= set(workers), (done, node_ids)
    victim, survivor = workers[next(iter(done.values()))]
    killed = h.kill_all(victim)
    done_at_kill = dict(done)
    assert killed > 0 and len(done_at_kill) < len(TILES), done_at_kill

    # The job ends by itself: every tile complete once, on the hosts that are left.
    logs = h.run(head, "ray", "job", "logs", "--address", DASHBOARD, "--follow", sub_id, env=client_env, timeout=180,
                 label="ray job logs")
    status = h.run(head, "ray", "job", "status", "--address", DASHBOARD, sub_id, env=client_env, timeout=60,
                   label="ray job status")
    assert "succeeded" in (status.stdout + status.stderr), (status.stdout + status.stderr)[-2000:]
    assert f"{len(TILES)} tiles committed, 0 failed" in logs.stdout, logs.stdout[-3000:]
    assert_complete_once(store_url, TILES, debris=True)
    by_node = _committed_by(store)
    assert set(by_node) == set(TILES)
    assert set(by_node.values()) <= {node_ids[w1.ip], node_ids[w2.ip]}, by_node
    after_kill = {t for t in TILES if t not in done_at_kill}
    assert all(by_node[t] == node_ids[survivor.ip] for t in after_kill), (after_kill, by_node)
    verify = subprocess.run([str(BIN / "tessera-pipeline"), "verify", "--store", store_url], capture_output=True,
                            text=True, timeout=120)
    h.outputs["verify"] = verify.stdout + verify.stderr
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    st = subprocess.run([str(BIN / "tessera-pipeline"), "status", "--store", store_url, "--json"], capture_output=True,
                        text=True, timeout=120)
    h.outputs["status --json"] = st.stdout + st.stderr
    assert st.returncode == 0, st.stderr[-3000:]
    doc = json.loads(st.stdout)
    assert doc["complete"] == len(TILES) and doc["failed"] == 0, doc
    # The victim died with a tile in flight: the driver's last progress snapshot counts it as retried, not failed.
    progress = run_status(store_url).progress or {}
    assert progress.get("retries_by_reason", {}).get("actor-lost", 0) >= 1, progress

    # The hosts without the token were refused by the head's GCS, left nothing running, and never became nodes.
    for label, proc in intruders.items():
        text, _ = proc.communicate(timeout=120)
        h.outputs[f"ray start ({label})"] = text
        assert proc.returncode != 0, text[-3000:]
        assert REFUSED in text, text[-3000:]
    assert h.pids(outsider) == []
    deadline = time.monotonic() + 60  # Ray declares a SIGKILLed node dead after its GCS health checks fail (~15 s)
    while True:
        nodes = _nodes(h, client_env)
        assert {n["node_ip"] for n in nodes} == {head.ip, w1.ip, w2.ip}, nodes
        states = {n["node_ip"]: n["state"] for n in nodes}
        if states[victim.ip] == "DEAD" or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert states == {head.ip: "ALIVE", victim.ip: "DEAD", survivor.ip: "ALIVE"}, states
    print(f"cluster up in {started - t0:.0f} s, whole path {time.monotonic() - t0:.0f} s; "
          f"{len(done_at_kill)} tile(s) committed when {victim.role} was killed ({killed} processes)")
