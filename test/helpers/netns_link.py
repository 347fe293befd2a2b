"""Two computers on one machine: network namespaces and an emulated link between them (tests, bench).

The robot half of a rig runs in namespace ``bv<id>r`` (10.77.0.1), the policy half in ``bv<id>p``
(10.77.0.2). Each has one veth interface and no default route, so nothing it sends can leave the
machine. The two veth pairs meet in a third namespace, ``bv<id>b``, where ``bridge`` (below, a plain
Python process) copies Ethernet frames between them and adds what this kernel's missing netem
would: a one-way delay with jitter, random loss and a rate cap, per direction, in FIFO order (one
link: frames are not reordered). A user-space UDP relay cannot do this for DDS, whose discovery
tells each side the other's own addresses; a bridge is transparent to them. Interfaces use a
9000-byte MTU (jumbo frames), so a 64 KiB DDS datagram is 8 frames, not 45: the bridge keeps up.

DDS in both namespaces: ``config/fastdds/remote_udp.xml``, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``
(no multicast) and ``ROS_STATIC_PEERS`` = the other side (``dds_env``). Each namespace gets a machine id
and host name of its own (``/etc/netns/<ns>/``), as two computers have, and the veth ends compute their
own UDP checksums (``_tx_checksums``).

Needs root and ``ip netns`` (``available`` says why not).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / 'config' / 'fastdds' / 'remote_udp.xml'
ROBOT_IP, POLICY_IP = '10.77.0.1', '10.77.0.2'
MTU = 9000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['ip', *args], capture_output=True, text=True)


def available() -> str | None:
    """None if namespaces can be made here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return 'network namespaces need root'
    probe = f'bvprobe{os.getpid()}'
    made = _ip('netns', 'add', probe)
    if made.returncode != 0:
        return f'ip netns add is not permitted here: {made.stderr.strip()}'
    _ip('netns', 'del', probe)
    return None


@dataclass(frozen=True)
class Impairment:
    """One direction's (or both) link: one-way delay, jitter (uniform +-), loss fraction, rate cap."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float = 0.0  # 0: no cap

    def args(self) -> list[str]:
        return [
            f'--delay-ms={self.delay_ms}',
            f'--jitter-ms={self.jitter_ms}',
            f'--loss={self.loss}',
            f'--rate-mbit={self.rate_mbit}',
        ]


class Namespaces:
    """The three namespaces and their veth pairs; a context manager that removes them again."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.robot, self.policy, self.bridge_ns = f'bv{ident}r', f'bv{ident}p', f'bv{ident}b'
        self.robot_if, self.policy_if = f'r{ident}a', f'p{ident}a'
        self.bridge_ifs = (f'r{ident}b', f'p{ident}b')  # robot side, policy side
        self._bridge: subprocess.Popen | None = None
        self.stats_file: Path | None = None

    def __enter__(self) -> Namespaces:
        self.remove()
        try:
            for ns in (self.robot, self.policy, self.bridge_ns):
                self._check(_ip('netns', 'add', ns))
                self._check(_ip('-n', ns, 'link', 'set', 'lo', 'up'))
                # IPv4 only: no IPv6 router solicitations or neighbour discovery on the link
                sysctl = ['sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1']
                subprocess.run(self.exec_argv(ns, sysctl), capture_output=True)
            for ns in (self.robot, self.policy):
                # `ip netns exec` mounts /etc/netns/<ns>/* over /etc: each "computer" gets a machine id of
                # its own. Fast DDS derives its host id from it and takes participants with the same host
                # id for local ones (it would send them data on 127.0.0.1, which the other namespace's
                # loopback never sees).
                etc = Path('/etc/netns') / ns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / 'machine-id').write_text(uuid.uuid4().hex + '\n')
                (etc / 'hostname').write_text(ns + '\n')
            for end, ns, addr in ((self.robot_if, self.robot, ROBOT_IP), (self.policy_if, self.policy, POLICY_IP)):
                peer = end[:-1] + 'b'
                self._check(_ip('link', 'add', end, 'type', 'veth', 'peer', 'name', peer))
                self._check(_ip('link', 'set', end, 'netns', ns))
                self._check(_ip('link', 'set', peer, 'netns', self.bridge_ns))
                self._check(_ip('-n', ns, 'addr', 'add', f'{addr}/24', 'dev', end))
                self._check(_ip('-n', ns, 'link', 'set', end, 'mtu', str(MTU), 'up'))
                self._tx_checksums(ns, end)
                self._check(_ip('-n', self.bridge_ns, 'link', 'set', peer, 'mtu', str(MTU), 'up'))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_bridge()
        self.remove()

    def _tx_checksums(self, ns: str, interface: str) -> None:
        """Let the kernel compute UDP checksums when it sends (ethtool -K IF tx off, without ethtool).

        veth leaves them to "hardware" that never comes: frames the bridge copies would arrive with a
        partial checksum and be dropped as UdpInCsumErrors.
        """
        code = (
            'import fcntl, socket, struct, array, sys\n'
            's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n'
            'value = array.array("I", [0x17, 0])\n'  # ETHTOOL_STXCSUM, off
            'addr, _ = value.buffer_info()\n'
            'ifreq = struct.pack("16sP", sys.argv[1].encode(), addr)\n'
            'fcntl.ioctl(s.fileno(), 0x8946, ifreq)\n'  # SIOCETHTOOL
        )
        self._check(
            subprocess.run(self.exec_argv(ns, [sys.executable, '-c', code, interface]), capture_output=True, text=True)
        )

    @staticmethod
    def _check(result: subprocess.CompletedProcess) -> None:
        if result.returncode != 0:
            raise RuntimeError(f'{" ".join(result.args)}: {result.stderr.strip()}')

    def remove(self) -> None:
        for ns in (self.robot, self.policy, self.bridge_ns):
            _ip('netns', 'del', ns)  # deleting a namespace deletes its veth ends (and their peers)
            shutil.rmtree(Path('/etc/netns') / ns, ignore_errors=True)

    def routes(self, ns: str) -> list[str]:
        """The namespace's routing table (the test checks there is no default route)."""
        return _ip('-n', ns, 'route', 'show', 'table', 'all').stdout.splitlines()

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ['ip', 'netns', 'exec', ns, *argv]

    def dds_env(self, side: str, domain: int, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a ROS process on ``side`` ('robot' or 'policy')."""
        env = dict(os.environ if base is None else base)
        env.pop('ROS_DISTRO', None)
        env.update(
            ROS_DOMAIN_ID=str(domain),
            ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',  # unicast only: this host, and the static peer
            ROS_STATIC_PEERS=POLICY_IP if side == 'robot' else ROBOT_IP,
            FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
            MUJOCO_GL=env.get('MUJOCO_GL', 'egl'),
            PYTHONUNBUFFERED='1',
        )
        return env

    def start_bridge(self, to_policy: Impairment, to_robot: Impairment, stats_file: Path, seed: int = 0) -> None:
        """The link: frames from the robot go to the policy with ``to_policy``'s impairment, and back."""
        self.stop_bridge()
        self.stats_file = stats_file
        argv = [sys.executable, __file__, 'bridge', *self.bridge_ifs, f'--stats={stats_file}', f'--seed={seed}']
        argv += ['--to-policy', *to_policy.args(), '--to-robot', *to_robot.args()]
        self._bridge = subprocess.Popen(self.exec_argv(self.bridge_ns, argv), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not stats_file.exists():
            if self._bridge.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'bridge did not start: {self._bridge.stderr.read() if self._bridge.stderr else ""}')
            time.sleep(0.05)

    def bridge_stats(self) -> dict:
        assert self.stats_file is not None
        return json.loads(self.stats_file.read_text())

    def stop_bridge(self) -> None:
        if self._bridge is not None and self._bridge.poll() is None:
            self._bridge.send_signal(signal.SIGTERM)
            try:
                self._bridge.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._bridge.kill()
                self._bridge.wait()
        self._bridge = None


class Probe:
    """``helpers/ros_probe.py`` running in a namespace: ``ask('count')`` -> its JSON answer."""

    def __init__(self, ns: Namespaces, side: str, arms: Sequence[str], domain: int, sim_time: bool = False) -> None:
        argv = [sys.executable, str(Path(__file__).with_name('ros_probe.py')), ','.join(arms)]
        argv += ['sim'] if sim_time else []
        env = ns.dds_env(side, domain)
        env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
        where = ns.robot if side == 'robot' else ns.policy
        self.proc = subprocess.Popen(
            ns.exec_argv(where, argv), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._read(30.0)  # {'ready': true}

    def _read(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError('probe did not answer')
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f'probe exited ({self.proc.poll()})')
        return json.loads(line)

    def ask(self, command: str, timeout: float = 20.0) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + '\n')
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask('quit', 2.0)
        stop(self.proc)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGINT (the CLI's safe stop), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def namespaces(ident: int) -> Iterator[Namespaces]:
    with Namespaces(ident) as ns:
        yield ns


# --------------------------------------------------------------------------- the bridge


class Direction:
    """Frames one way: when each leaves (delay, jitter, rate, FIFO), which are lost, counters."""

    def __init__(self, name: str, imp: Impairment, rng: random.Random) -> None:
        self.name, self.imp, self.rng = name, imp, rng
        self.last_due = 0.0
        self.link_free = 0.0
        self.frames = self.bytes = self.lost = self.lost_bytes = 0
        self.multicast = 0  # IPv4 multicast frames (DDS discovery's default): must stay 0

    def count(self, frame: bytes) -> None:
        if frame[:3] == b'\x01\x00\x5e':
            self.multicast += 1

    def schedule(self, now: float, size: int) -> float | None:
        """When a frame received now leaves, or None if it is lost."""
        self.frames += 1
        self.bytes += size
        if self.imp.loss > 0 and self.rng.random() < self.imp.loss:
            self.lost += 1
            self.lost_bytes += size
            return None
        delay = self.imp.delay_ms + (self.rng.uniform(-1, 1) * self.imp.jitter_ms if self.imp.jitter_ms else 0.0)
        due = now + max(0.0, delay) / 1e3
        if self.imp.rate_mbit > 0:  # serialisation at the capped rate, queued behind earlier frames
            start = max(now, self.link_free)
            self.link_free = start + size * 8 / (self.imp.rate_mbit * 1e6)
            due = max(due, self.link_free)
        due = max(due, self.last_due)  # one link: no reordering
        self.last_due = due
        return due

    def stats(self) -> dict:
        return {
            'frames': self.frames,
            'bytes': self.bytes,
            'lost_frames': self.lost,
            'lost_bytes': self.lost_bytes,
            'ipv4_multicast_frames': self.multicast,
        }


def _impairment(ns: argparse.Namespace) -> Impairment:
    return Impairment(ns.delay_ms, ns.jitter_ms, ns.loss, ns.rate_mbit)


def bridge_main(argv: Sequence[str]) -> int:
    """``bridge ROBOT_IF POLICY_IF --stats FILE --to-policy ... --to-robot ...`` (run inside the bridge namespace)."""
    parser = argparse.ArgumentParser(prog='netns_link bridge')
    parser.add_argument('robot_if')
    parser.add_argument('policy_if')
    parser.add_argument('--stats', required=True)
    parser.add_argument('--seed', type=int, default=0)
    args_list = list(argv)
    i, j = args_list.index('--to-policy'), args_list.index('--to-robot')
    base = parser.parse_args(args_list[:i])
    link = argparse.ArgumentParser(prog='netns_link link')
    link.add_argument('--delay-ms', type=float, default=0.0)
    link.add_argument('--jitter-ms', type=float, default=0.0)
    link.add_argument('--loss', type=float, default=0.0)
    link.add_argument('--rate-mbit', type=float, default=0.0)
    to_policy = _impairment(link.parse_args(args_list[i + 1 : j]))
    to_robot = _impairment(link.parse_args(args_list[j + 1 :]))
    rng = random.Random(base.seed)

    socks = {}
    for name in (base.robot_if, base.policy_if):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setblocking(False)
        socks[name] = s
    robot, policy = socks[base.robot_if], socks[base.policy_if]
    dirs = {
        robot.fileno(): (Direction('to_policy', to_policy, rng), policy),
        policy.fileno(): (Direction('to_robot', to_robot, rng), robot),
    }
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    seq = 0
    stop = {'now': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__('now', True))
    stats_path = Path(base.stats)
    started = time.monotonic()

    def write_stats() -> None:
        data = {d.name: d.stats() for d, _ in dirs.values()}
        data['elapsed_s'] = time.monotonic() - started
        tmp = stats_path.with_suffix('.tmp')
        tmp.write_text(json.dumps(data))
        tmp.replace(stats_path)

    write_stats()
    next_stats = time.monotonic() + 0.5
    while not stop['now']:
        now = time.monotonic()
        timeout = 0.2
        if queue:
            timeout = max(0.0, min(timeout, queue[0][0] - now))
        readable, _, _ = select.select([robot, policy], [], [], timeout)
        now = time.monotonic()
        for s in readable:
            direction, out = dirs[s.fileno()]
            for _ in range(256):  # drain what is there
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:  # our own transmission, seen on the way out
                    continue
                direction.count(frame)
                due = direction.schedule(now, len(frame))
                if due is not None:
                    heapq.heappush(queue, (due, seq, out, frame))
                    seq += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            with contextlib.suppress(BlockingIOError, OSError):
                out.send(frame)
        if now >= next_stats:
            write_stats()
            next_stats = now + 0.5
    write_stats()
    return 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'bridge':
        sys.exit(bridge_main(sys.argv[2:]))
    sys.exit(f'usage: {sys.argv[0]} bridge ROBOT_IF POLICY_IF --stats FILE --to-policy ... --to-robot ...')
