"""Fault-injection soak: the simulated rig on emulated servo buses, policy enabled, faults on a seeded schedule.

Runs what `bimanual-vla run --rig aloha_sim --set sim_rig.servo_bus=feetech` runs: sim_rig in real
time with each arm an emulated servo bus on a pty, the two real arm_drivers driving it, both in this
process, and the policy node enabled in a child process (restarted with backoff, disabled, when
`compose` supports it), with the shipped checkpoint (or `--checkpoint`, or `--tiny`), plus
`bimanual-vla record` in a process of its own, split every `--record-split-s`. Every fault the stack
claims to survive is injected, one at a time, round robin in a seeded order, `--fault-every LO HI`
seconds after the previous one recovered (sim/fault_injection.py):

  servo_missing    one servo stops answering (emulator FaultConfig.missing_ids) for 2-5 s
  late_replies     30 % of replies arrive one transaction late, 3-8 s
  corrupt_replies  20 % of replies with a flipped bit, 5 % with line noise before them, 3-8 s
  port_vanish      the arm's pty closes and its link goes (SimRig.unplug_servo_bus), back after 2-5 s
  camera_gone      a camera publishes nothing, 2-5 s            (SimRig.camera_faults)
  camera_frozen    a camera repeats one image under new stamps, 2-5 s
  camera_stale     a camera's new images keep the stamp of the fault's start, 2-5 s
  policy_sigkill   SIGKILL to the policy process (skipped where nothing restarts it)
  policy_sigstop   SIGSTOP to the policy process, SIGCONT 2-5 s later
  nan_commands     a rogue publisher sends NaN/Inf joint commands to both arms at 50 Hz, 2-4 s
  estop_storm      e-stop toggled every 5-50 ms for 0.5-1.5 s, ending released
  estop_qos        e-stop asserted for 1 s, then released, from a publisher of each QoS
                   (reliable/best effort x volatile/transient local): each must reach both drivers
  episode_reset    sim/reset_seed (the sim power-cycles the servos)

After each fault is cleared the bench calls `policy/enable` (every 2 s until commands flow: after an
e-stop or a restart the policy is disabled) and waits for recovery: each driver connected, every
servo answering and the driver following commands; every camera's frames received after the clear
and fresh against sim time (the policy's `camera_max_age_s`); the policy's commands arriving on
every arm after the clear. Recovery time = clear -> all of that (a frozen camera cannot be told
from a live one by its stamps, so it recovers at once; `policy_saw` says what the policy saw stale).

Measured: faults and recovery times by kind (p50/max); every goal write the emulators receive,
checked against the joint limits and the driver's `max_velocity_rad_s` (fault_injection.GoalChecker:
both must be 0); e-stop published -> last goal change (p50/p99/max); memory, threads and fds per
process per hour (soak_bench.proc_sample; a restarted process is a new series); the bag read back:
gaps longer than `--max-gap-s` in joint_states (per arm) and camera images outside fault windows
(must be none); servos the drivers lost while no fault was active (`servos_lost_without_fault`:
the bus loop starved on a loaded machine, the usual cause of such a gap). Prints one JSON report;
`--report FILE` appends it to a JSON-lines file, so segments add up to one long soak, and
`--summarise FILE` totals them (robot hours, faults by kind, worst figures).

    .venv/bin/python bench/fault_soak_bench.py --minutes 3 --tiny --fault-every 15 15
    .venv/bin/python bench/fault_soak_bench.py --minutes 30 --seed 1 --report soak.jsonl [--servo-bus dynamixel]
        [--kinds port_vanish,estop_qos] [--record-dir DIR --keep-bag] [--no-record] [--samples FILE]
    .venv/bin/python bench/fault_soak_bench.py --summarise soak.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.rosenv import apply_pip_defaults  # noqa: E402

apply_pip_defaults()
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))

import numpy as np  # noqa: E402
from soak_bench import proc_sample, read_back, summarise_process  # noqa: E402

from bimanual_vla.sim.fault_injection import (  # noqa: E402
    FAULT_KINDS,
    MIN_FIT_MINUTES,
    Fault,
    GoalChecker,
    fault_sequence,
    gaps_outside,
    stats,
    summarise_segments,
    tap_goal_writes,
)

RIG = 'aloha_sim'
RSS_TARGET_MB_PER_HOUR = 10.0
ESTOP_STORM_QOS = 'reliable_transient_local'  # the contract's e-stop QoS (topics.LATCHED_QOS)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--summarise', type=Path, metavar='FILE', help='total the segments in a --report file and exit')
    p.add_argument('--minutes', type=float, default=30.0, help='soak length after the rig first became healthy')
    p.add_argument('--seed', type=int, default=0, help='fault schedule seed')
    p.add_argument('--fault-every', type=float, nargs=2, default=(30.0, 120.0), metavar=('LO', 'HI'))
    p.add_argument('--first-fault-s', type=float, default=20.0, help='healthy run before the first fault')
    p.add_argument('--kinds', default=','.join(FAULT_KINDS), help='comma-separated fault kinds')
    p.add_argument('--recovery-timeout-s', type=float, default=60.0)
    p.add_argument('--servo-bus', choices=('feetech', 'dynamixel'), default='feetech')
    p.add_argument('--checkpoint', type=Path, help='checkpoint to run (default: the shipped one)')
    p.add_argument('--tiny', action='store_true', help='a tiny random checkpoint instead')
    p.add_argument('--jitter-s', type=float, default=0.02, help='goal-write delivery jitter the velocity check allows')
    p.add_argument('--max-gap-s', type=float, default=0.5, help='longest bag gap allowed outside fault windows')
    p.add_argument('--sample-every', type=float, default=10.0, help='seconds between process samples')
    p.add_argument('--warmup', type=float, default=60.0, help='seconds of each process excluded from growth fits')
    p.add_argument('--no-record', action='store_true', help='run without the recorder')
    p.add_argument('--record-dir', type=Path, help='where the bag goes (default: a new temporary directory)')
    p.add_argument('--record-split-s', type=float, default=60.0, help='split the bag every so many seconds')
    p.add_argument('--keep-bag', action='store_true', help='keep the bag after reading it back')
    p.add_argument('--report', type=Path, metavar='FILE', help='append the JSON report to this JSON-lines file')
    p.add_argument('--samples', type=Path, metavar='FILE', help='write every process sample series here (JSON lines)')
    return p.parse_args()


# --------------------------------------------------------------------------- ROS side


def estop_profiles() -> dict[str, Any]:
    """One QoS per reliability x durability combination, named e.g. 'best_effort_transient_local'."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return {
        f'{r.name.lower()}_{d.name.lower()}': QoSProfile(depth=1, reliability=r, durability=d)
        for r in (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT)
        for d in (DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL)
    }


def make_probe(arms: list[str], cameras: list[str], task: str) -> Any:
    """The bench's node: what it hears (commands, camera stamps, diagnostics) and what it sends."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, JointState
    from std_msgs.msg import Bool, Int64, String
    from std_srvs.srv import SetBool

    from bimanual_vla import topics
    from bimanual_vla.ros_utils import stamp_to_sec

    class Probe(Node):
        def __init__(self) -> None:
            super().__init__('fault_soak_probe')
            self.command_t: dict[str, float] = {}  # arm -> when its last finite joint command arrived
            self.camera: dict[str, tuple[float, float]] = {}  # camera -> (arrival, stamp) of its last frame
            self.diag: dict[str, dict[str, str]] = {}  # status name -> its latest values
            self.policy_stale: deque[tuple[float, str]] = deque(maxlen=3000)  # (arrival, stale_inputs)
            for arm in arms:
                self.create_subscription(
                    JointState, topics.arm_command(arm), lambda m, a=arm: self._on_command(a, m), topics.COMMAND_QOS
                )
            for cam in cameras:
                self.create_subscription(
                    CameraInfo, topics.camera_info(cam), lambda m, c=cam: self._on_info(c, m), topics.SENSOR_QOS
                )
            self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diag, topics.DIAGNOSTICS_QOS)
            self.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS).publish(String(data=task))
            self.reset_pub = self.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
            self.estop_pubs = {n: self.create_publisher(Bool, topics.ESTOP, q) for n, q in estop_profiles().items()}
            self.rogue = {
                arm: self.create_publisher(JointState, topics.arm_command(arm), topics.COMMAND_QOS) for arm in arms
            }
            self.enable_client = self.create_client(SetBool, topics.POLICY_ENABLE)
            self._enable: tuple[Any, float] | None = None

        def _on_command(self, arm: str, msg: JointState) -> None:
            if msg.position and all(math.isfinite(p) for p in msg.position):  # the rogue's are not
                self.command_t[arm] = time.monotonic()

        def _on_info(self, cam: str, msg: CameraInfo) -> None:
            self.camera[cam] = (time.monotonic(), stamp_to_sec(msg.header.stamp))

        def _on_diag(self, msg: DiagnosticArray) -> None:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                self.diag[status.name.split(':')[0]] = values
                if status.name.startswith('policy_node:'):
                    self.policy_stale.append((time.monotonic(), values.get('stale_inputs', '')))

        def stale_seen(self, start: float, end: float) -> list[str]:
            """What the policy reported stale between `start` and `end` ('camera top', 'joints left', ...)."""
            seen = {
                part.split(':')[0].strip()
                for t, text in list(self.policy_stale)
                if start <= t <= end and text not in ('', 'none')
                for part in text.split(';')
            }
            return sorted(seen)

        def request_enable(self) -> None:
            """Call policy/enable (true) unless a call made in the last 2 s is still pending."""
            now = time.monotonic()
            if self._enable is not None and not self._enable[0].done():
                if now - self._enable[1] < 2.0:
                    return
                self.enable_client.remove_pending_request(self._enable[0])  # the server died with it
            if self.enable_client.service_is_ready():
                self._enable = (self.enable_client.call_async(SetBool.Request(data=True)), now)

    return Probe()


def compose_rig(args: argparse.Namespace, checkpoint: Path, probe: Any, bus_dir: Path) -> Any:
    """sim_rig + arm drivers here, the policy in its own process, restarted where compose offers it."""
    import inspect

    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    specs = rig_nodes(
        RIG,
        policy='default',
        sim_overrides={'servo_bus': args.servo_bus, 'servo_bus_dir': str(bus_dir)},
        policy_overrides={'checkpoint': str(checkpoint), 'enabled': True},
    )
    extra: dict[str, Any] = {}
    if 'restart' in inspect.signature(compose).parameters:
        from bimanual_vla.bringup.supervision import RestartPolicy

        extra['restart'] = RestartPolicy()
    return compose(specs, rig=RIG, extra_nodes=[probe], **extra)


def start_recorder(bag: Path, split_s: float) -> tuple[subprocess.Popen, Any]:
    cli = Path(sys.executable).with_name('bimanual-vla')
    log = open(f'{bag}.log', 'w')  # open for the recorder's lifetime
    command = [str(cli), 'record', str(bag), '--rig', RIG, '--max-bag-duration', str(split_s)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log


# ------------------------------------------------------------------------ measurements


class ProcessSamples:
    """proc_sample() of each process; a process whose pid changes (a restart) starts a new series."""

    def __init__(self) -> None:
        self.series: list[dict[str, Any]] = []
        self._current: dict[str, dict[str, Any]] = {}

    def sample(self, pids: dict[str, int | None], t: float) -> None:
        for name, pid in pids.items():
            if pid is None:
                continue
            series = self._current.get(name)
            if series is None or series['pid'] != pid:
                label = name if series is None else f'{name}_restart{sum(s["name"] == name for s in self.series)}'
                series = {'name': name, 'label': label, 'pid': pid, 't': [], 'rows': []}
                self.series.append(series)
                self._current[name] = series
            try:
                series['rows'].append(proc_sample(pid))
            except OSError:  # it just exited
                continue
            series['t'].append(t)

    def write(self, path: Path) -> None:
        """One JSON line per series (label, pid, t in s from the soak's start, rss_mb, threads, fds): the
        data behind a growth fit, to tell a one-time step from a leak."""
        with path.open('w') as f:
            for s in self.series:
                row = {'label': s['label'], 'pid': s['pid'], 't': [round(t, 1) for t in s['t']]}
                row.update({key: [r[i] for r in s['rows']] for i, key in enumerate(('rss_mb', 'threads', 'fds'))})
                f.write(json.dumps(row) + '\n')

    def report(self, warmup: float) -> dict[str, Any]:
        out = {}
        for s in self.series:
            if len(s['rows']) < 2:
                continue
            t = np.array(s['t']) - s['t'][0]
            entry = summarise_process(t, s['rows'], warmup)
            entry['minutes'] = round(float(t[-1]) / 60.0, 1)
            for i, key in ((1, 'threads'), (2, 'fds')):
                values = np.array([r[i] for r in s['rows']], dtype=float)
                steady = t >= warmup
                fit = np.polyfit(t[steady], values[steady], 1)[0] * 3600 if steady.sum() >= 3 else float('nan')
                entry[key]['growth_per_hour'] = round(float(fit), 1)
            out[s['label']] = entry
        return out


def driver_problems(arm: str, controller: Any) -> list[str]:
    if not controller.connected:
        return [f'arm {arm} disconnected']
    if controller.missing:
        return [f'arm {arm} servos {sorted(controller.missing)} missing']
    if controller.filter.state != 'following':
        return [f'arm {arm} {controller.filter.state}']
    return []


def bus_counters(controller: Any) -> dict[str, int]:
    return {k: v for k, v in controller.snapshot().items() if k.startswith('bus_') and isinstance(v, int)}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def nan_command(names: list[str], rng: random.Random) -> Any:
    """A joint command with at least one NaN or Inf (the rest plausible), as a diverged policy would send."""
    from sensor_msgs.msg import JointState

    positions = [rng.choice([0.0, 0.1, math.nan, math.inf, -math.inf]) for _ in names]
    positions[rng.randrange(len(names))] = rng.choice([math.nan, math.inf, -math.inf])
    return JointState(name=list(names), position=positions)


def bag_gaps(
    bag: Path, origin: float, windows: list[tuple[float, float]], max_gap_s: float, cameras: list[str]
) -> dict:
    """Gaps in joint_states (per arm) and camera images longer than `max_gap_s` outside `windows`.

    Times are seconds after `origin` (the bench's start, wall clock), as the events' `at_s` are.
    """
    from bimanual_vla import topics
    from bimanual_vla.bags.read import BagReader

    wanted = [topics.JOINT_STATES] + [topics.camera_image(c) for c in cameras]
    times: dict[str, list[float]] = {}
    with BagReader(bag) as reader:
        for msg in reader.messages(wanted):
            key = msg.topic.lstrip('/')
            if key == topics.JOINT_STATES:
                names = reader.decode(msg).name
                key = f'{key}[{names[0].split("_")[0] if names else "?"}]'
            times.setdefault(key, []).append(msg.timestamp_ns * 1e-9 - origin)
    outside = [
        [key, round(a, 2), round(b - a, 3)]
        for key, ts in sorted(times.items())
        for a, b in gaps_outside(ts, max_gap_s, windows)
    ]
    longest = {}
    for key, ts in sorted(times.items()):
        if len(ts) > 1:
            i = int(np.argmax(np.diff(ts)))
            longest[key] = {'at_s': round(ts[i], 2), 'gap_s': round(ts[i + 1] - ts[i], 3)}
    return {'gaps_outside_faults': outside, 'longest_gap': longest, 'max_gap_s': max_gap_s}


# ------------------------------------------------------------------------------- soak


class FaultSoak:
    """Injects the schedule's faults one at a time, waits for recovery, and measures everything on the way."""

    def __init__(self, args: argparse.Namespace, composition: Any, probe: Any, pids: dict[str, int | None]) -> None:
        from bimanual_vla.config import load_policy
        from bimanual_vla.sim.servo_bus import RAD_PER_TICK, servo_calibration

        self.args = args
        self.composition = composition
        self.probe = probe
        self.sim = composition.node('sim_rig')
        self.drivers = {arm: composition.node(f'arm_driver_{arm}') for arm in self.sim.servo_buses}
        self.cameras = list(self.sim.cameras)
        self.camera_max_age_s = load_policy('default').staleness.camera_max_age_s
        self.pids = pids
        self.writes: deque[Any] = deque()
        bounds = {}
        for arm in self.sim.rig.arms:
            for j in servo_calibration(arm, args.servo_bus).joints.values():
                bounds[(arm.name, j.id)] = (j.range_min, j.range_max)
        velocity = {arm: velocity_bound(d) for arm, d in self.drivers.items()}
        self.started = time.monotonic()
        self.checker = GoalChecker(bounds, velocity, RAD_PER_TICK, jitter_s=args.jitter_s, t0=self.started)
        for arm, bus in self.sim.servo_buses.items():
            tap_goal_writes(bus.emulator, arm, self.writes.append)
        self.samples = ProcessSamples()
        self.events: list[dict[str, Any]] = []
        self.windows: list[tuple[float, float]] = []  # (monotonic start, end) of each fault and its recovery
        self.estop: dict[str, Any] = {'hold_s': [], 'by_qos': {}}
        self.problems: list[str] = []
        self.skipped: dict[str, str] = {}
        self.fatal: str | None = None
        self.active = ''  # the fault in progress, noted on goal-write examples
        self.seed = 1000  # episode seeds: held out from the shipped checkpoint's training
        self.started_utc = datetime.now(timezone.utc).isoformat(timespec='seconds')
        self.healthy_at: float | None = None
        self.ended: float | None = None
        self.sim_seconds = 0.0
        self._sim_last = self.sim.scene.time
        self.unprovoked: dict[str, Any] = {'count': 0, 'first': []}  # servo losses while no fault is active
        self._missing = {arm: self._missing_events(arm) for arm in self.drivers}
        self._next_sample = self.started

    # -------------------------------------------------------------------- loop

    def tick(self) -> None:
        """Drain goal writes into the checker, count sim time, sample processes, notice a dead child."""
        while self.writes:
            self.checker.add(self.writes.popleft(), self.active)
        self._note_servo_losses()
        sim_now = self.sim.scene.time
        if sim_now > self._sim_last:
            self.sim_seconds += sim_now - self._sim_last
        self._sim_last = sim_now
        now = time.monotonic()
        if now >= self._next_sample:
            if self.composition.children:
                self.pids['policy'] = self.composition.children[0].process.pid
            self.samples.sample(self.pids, now - self.started)
            self._next_sample += self.args.sample_every
        self.composition.check_children()  # raises where a dead policy process ends the bringup

    def _missing_events(self, arm: str) -> int:
        return sum(self.drivers[arm].controller.stats.missing_events.values())

    def _note_servo_losses(self) -> None:
        """Count drivers losing servos with no fault injected (a loaded machine starving the bus loop)."""
        for arm in self.drivers:
            total = self._missing_events(arm)
            if total > self._missing[arm] and not self.active:
                self.unprovoked['count'] += total - self._missing[arm]
                if len(self.unprovoked['first']) < 10:
                    self.unprovoked['first'].append([arm, round(time.monotonic() - self.started, 2)])
            self._missing[arm] = total

    def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tick()
            time.sleep(min(0.02, left))

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() >= end:
                return False
            self.idle(0.01)
        return True

    # ------------------------------------------------------------------ health

    def health_problems(self, since: float) -> list[str]:
        """Why the rig is not healthy, judged on what arrived after `since` (empty: healthy)."""
        problems = [p for arm, d in self.drivers.items() for p in driver_problems(arm, d.controller)]
        sim_now = self.sim.scene.time
        for cam in self.cameras:
            arrived, stamp = self.probe.camera.get(cam, (-math.inf, -math.inf))
            if arrived < since or abs(sim_now - stamp) > self.camera_max_age_s:
                problems.append(f'camera {cam} not fresh')
        problems += [f'no policy command on {a}' for a in self.drivers if self.probe.command_t.get(a, -1.0) < since]
        return problems

    def wait_healthy(self, since: float, timeout_s: float) -> tuple[float | None, list[str]]:
        """Seconds from `since` until healthy (None and the problems left on timeout); enables the policy meanwhile."""
        next_enable = 0.0
        while True:
            now = time.monotonic()
            problems = self.health_problems(since)
            if not problems:
                return now - since, []
            if now - since >= timeout_s:
                return None, problems
            if now >= next_enable:
                self.probe.request_enable()
                next_enable = now + 2.0
            self.idle(0.02)

    # ------------------------------------------------------------------- run

    def run(self) -> None:
        recovery, problems = self.wait_healthy(self.started, 180.0)
        if recovery is None:
            raise RuntimeError(f'the rig never became healthy: {problems}')
        self.healthy_at = time.monotonic()
        kinds = [k.strip() for k in self.args.kinds.split(',') if k.strip()]
        if 'policy_sigkill' in kinds and getattr(self.composition, 'supervisor', None) is None:
            kinds.remove('policy_sigkill')
            self.skipped['policy_sigkill'] = 'compose() restarts no child: a dead policy process ends the bringup'
        ids = {arm: bus.ids for arm, bus in self.sim.servo_buses.items()}
        schedule = fault_sequence(self.args.seed, kinds, ids, self.cameras, tuple(self.args.fault_every))
        end = self.healthy_at + self.args.minutes * 60.0
        self.idle(min(self.args.first_fault_s, end - time.monotonic()))
        for fault in schedule:
            if time.monotonic() >= end:
                break
            self.run_fault(fault)
            self.idle(min(fault.gap_s, max(0.0, end - time.monotonic())))

    def run_fault(self, fault: Fault) -> None:
        start = time.monotonic()
        self.active = fault.kind
        detail = getattr(self, f'inject_{fault.kind}')(fault)
        cleared = time.monotonic()
        recovery, problems = self.wait_healthy(cleared, self.args.recovery_timeout_s)
        self.active = ''
        self.windows.append((start, cleared + (recovery if recovery is not None else self.args.recovery_timeout_s)))
        event = {
            'kind': fault.kind,
            'at_s': round(start - self.started, 1),
            'target': target_of(fault),
            'fault_s': round(cleared - start, 2),
            'recovery_s': None if recovery is None else round(recovery, 3),
            'policy_saw': self.probe.stale_seen(start, cleared + 1.0),
            **detail,
        }
        if recovery is None:
            event['unrecovered'] = problems
            self.problems.append(
                f'{fault.kind} at {event["at_s"]} s: not recovered in {self.args.recovery_timeout_s:g} s: {problems}'
            )
        self.events.append(event)
        print(json.dumps(event), file=sys.stderr, flush=True)

    def clear_all(self) -> None:
        """Undo whatever fault may still be active (the run ends, or failed, mid-fault)."""
        from std_msgs.msg import Bool

        self.sim.camera_faults.clear()
        for bus in self.sim.servo_buses.values():
            faults = bus.emulator.faults
            faults.missing_ids, faults.late_reply_rate, faults.corrupt_rate, faults.noise_rate = set(), 0.0, 0.0, 0.0
        pid = self.composition.children[0].process.pid if self.composition.children else None
        if pid is not None:
            with_suppressed(os.kill, pid, signal.SIGCONT)
        for pub in self.probe.estop_pubs.values():
            pub.publish(Bool(data=False))

    # --------------------------------------------------------------- faults

    def inject_servo_missing(self, f: Fault) -> dict[str, Any]:
        events = self.drivers[f.arm].controller.stats.missing_events
        before = events.get(f.servo_id, 0)
        faults = self.sim.servo_buses[f.arm].emulator.faults
        faults.missing_ids = {f.servo_id}
        try:
            self.idle(f.duration_s)
        finally:
            faults.missing_ids = set()
        return {'driver_noticed': events.get(f.servo_id, 0) > before}

    def _bus_fault(self, f: Fault, **rates: float) -> dict[str, Any]:
        controller = self.drivers[f.arm].controller
        before = bus_counters(controller)
        faults = self.sim.servo_buses[f.arm].emulator.faults
        faults.seed = f.seed
        for name, value in rates.items():
            setattr(faults, name, value)
        try:
            self.idle(f.duration_s)
        finally:
            for name in rates:
                setattr(faults, name, 0.0)
        return {'bus_counters': counter_delta(before, bus_counters(controller))}

    def inject_late_replies(self, f: Fault) -> dict[str, Any]:
        return self._bus_fault(f, late_reply_rate=0.3)

    def inject_corrupt_replies(self, f: Fault) -> dict[str, Any]:
        return self._bus_fault(f, corrupt_rate=0.2, noise_rate=0.05)

    def inject_port_vanish(self, f: Fault) -> dict[str, Any]:
        stats_ = self.drivers[f.arm].controller.stats
        before = stats_.disconnects
        self.sim.unplug_servo_bus(f.arm)
        try:
            self.idle(f.duration_s)
        finally:
            self.sim.replug_servo_bus(f.arm)
        return {'driver_disconnects': stats_.disconnects - before}

    def _camera_fault(self, f: Fault, mode: str) -> dict[str, Any]:
        self.sim.camera_faults.set(f.camera, mode)
        try:
            self.idle(f.duration_s)
        finally:
            self.sim.camera_faults.clear(f.camera)
        return {}

    def inject_camera_gone(self, f: Fault) -> dict[str, Any]:
        return self._camera_fault(f, 'gone')

    def inject_camera_frozen(self, f: Fault) -> dict[str, Any]:
        return self._camera_fault(f, 'frozen')

    def inject_camera_stale(self, f: Fault) -> dict[str, Any]:
        return self._camera_fault(f, 'stale')

    def inject_policy_sigkill(self, f: Fault) -> dict[str, Any]:
        """Cleared once the process is gone and its last messages are delivered: recovery is the restart."""
        child = self.composition.children[0]
        pid = child.process.pid
        os.kill(pid, signal.SIGKILL)
        self.wait_until(lambda: child.process.pid != pid or not child.alive(), 5.0)
        self.idle(0.2)
        return {'killed_pid': pid}

    def inject_policy_sigstop(self, f: Fault) -> dict[str, Any]:
        pid = self.composition.children[0].process.pid
        before = self._driver_counter('watchdog_trips')
        os.kill(pid, signal.SIGSTOP)
        try:
            self.idle(f.duration_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return {'driver_watchdog_trips': self._driver_counter('watchdog_trips') - before}

    def inject_nan_commands(self, f: Fault) -> dict[str, Any]:
        rng = random.Random(f.seed)
        before = self._driver_counter('rejected_not_finite')
        sent, end = 0, time.monotonic() + f.duration_s
        while time.monotonic() < end:
            for arm, pub in self.probe.rogue.items():
                pub.publish(nan_command(self.drivers[arm].controller.qualified_names, rng))
                sent += 1
            self.idle(0.02)
        self.idle(0.1)  # the last ones arrive
        return {'sent': sent, 'rejected_by_drivers': self._driver_counter('rejected_not_finite') - before}

    def inject_estop_storm(self, f: Fault) -> dict[str, Any]:
        from std_msgs.msg import Bool

        rng = random.Random(f.seed)
        pub = self.probe.estop_pubs[ESTOP_STORM_QOS]
        before = self._driver_counter('estop_activations')
        toggles, state, end = 0, False, time.monotonic() + f.duration_s
        while time.monotonic() < end:
            state = not state
            pub.publish(Bool(data=state))
            toggles += 1
            self.idle(rng.uniform(0.005, 0.05))
        pub.publish(Bool(data=False))
        released = self.wait_until(lambda: not self._any_estopped(), 2.0)
        if not released:
            self.problems.append('estop_storm: the drivers stayed e-stopped after the final release')
        return {
            'toggles': toggles,
            'released': released,
            'driver_estops': self._driver_counter('estop_activations') - before,
        }

    def inject_estop_qos(self, f: Fault) -> dict[str, Any]:
        return {
            'by_qos': {name: self._estop_once(name, pub, f.duration_s) for name, pub in self.probe.estop_pubs.items()}
        }

    def _estop_once(self, name: str, pub: Any, hold_s: float) -> dict[str, Any]:
        """E-stop from one publisher: did it reach both drivers, how long until their goals held."""
        from std_msgs.msg import Bool

        moving = self.wait_until(lambda: self.checker.moving(0.2), 3.0)  # a hold shows only on moving arms
        t0 = time.monotonic()
        pub.publish(Bool(data=True))
        reached = self.wait_until(self._all_estopped, 1.0)
        reach_s = time.monotonic() - t0
        self.idle(max(0.0, hold_s - (time.monotonic() - t0)))
        holds = {arm: round(self.checker.hold_latency(arm, t0), 4) for arm in self.drivers}
        release = time.monotonic()
        pub.publish(Bool(data=False))
        released = self.wait_until(lambda: not self._any_estopped(), 1.0)
        if not released:  # a lost release: say so, and release through the contract's QoS to go on
            self.problems.append(f'e-stop release from a {name} publisher did not reach the drivers')
            self.probe.estop_pubs[ESTOP_STORM_QOS].publish(Bool(data=False))
        entry = self.estop['by_qos'].setdefault(name, {'published': 0, 'reached_drivers': 0})
        entry['published'] += 1
        entry['reached_drivers'] += int(reached)
        if reached:
            self.estop['hold_s'] += list(holds.values())
        else:
            self.problems.append(f'e-stop from a {name} publisher did not reach the drivers')
        self.probe.request_enable()
        self.wait_until(lambda: all(self.probe.command_t.get(a, -1.0) > release for a in self.drivers), 5.0)
        return {
            'reached': reached,
            'reach_s': round(reach_s, 3),
            'released': released,
            'moving': moving,
            'hold_s': holds,
        }

    def inject_episode_reset(self, f: Fault) -> dict[str, Any]:
        from std_msgs.msg import Int64

        buses = self.sim.servo_buses.values()
        before = sum(b.power_cycles for b in buses)
        self.seed += 1
        self.probe.reset_pub.publish(Int64(data=self.seed))
        cycled = self.wait_until(lambda: sum(b.power_cycles for b in buses) > before, 2.0)
        return {'seed': self.seed, 'servos_power_cycled': cycled}

    def _driver_counter(self, key: str) -> int:
        return sum(d.controller.filter.counters.get(key, 0) for d in self.drivers.values())

    def _all_estopped(self) -> bool:
        return all(d.controller.filter.estopped for d in self.drivers.values())

    def _any_estopped(self) -> bool:
        return any(d.controller.filter.estopped for d in self.drivers.values())

    # ---------------------------------------------------------------- report

    def report(self, recording: dict[str, Any] | None) -> dict[str, Any]:
        end = self.ended or time.monotonic()
        healthy = self.healthy_at or end
        processes = self.samples.report(self.args.warmup)
        if self.args.samples:
            self.samples.write(self.args.samples)
        goals = self.checker.report()
        report = {
            'bench': 'fault_soak',
            'started_utc': self.started_utc,
            'minutes': round((end - healthy) / 60.0, 2),
            'sim_minutes': round(self.sim_seconds / 60.0, 2),
            'real_time_factor': round(self.sim_seconds / max(1e-9, end - self.started), 3),
            'startup_s': round(healthy - self.started, 1),
            'seed': self.args.seed,
            'servo_bus': self.args.servo_bus,
            'fault_every_s': list(self.args.fault_every),
            'faults': self._faults_by_kind(),
            'skipped_kinds': self.skipped,
            'goal_writes': goals,
            'estop': {**self.estop, 'hold': stats(self.estop['hold_s'])},
            'processes': processes,
            'rss_target_mb_per_hour': RSS_TARGET_MB_PER_HOUR,
            'policy': self._policy_values(),
            'drivers': {arm: self._driver_values(d) for arm, d in self.drivers.items()},
            'servos_lost_without_fault': self.unprovoked,
            'sim': {
                k: self.probe.diag.get('sim_rig', {}).get(k)
                for k in ('pacing_overruns', 'frames_dropped', 'commands_rejected')
            },
            'recording': recording,
            'events': self.events,
            'fatal': self.fatal,
        }
        report['problems'] = self.problems + self._check_problems(goals, processes, recording)
        report['ok'] = not report['problems'] and self.fatal is None
        return report

    def _faults_by_kind(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e in self.events:
            entry = out.setdefault(e['kind'], {'injected': 0, 'recovered': 0, 'recovery_s': []})
            entry['injected'] += 1
            if e['recovery_s'] is not None:
                entry['recovered'] += 1
                entry['recovery_s'].append(e['recovery_s'])
        for entry in out.values():
            s = stats(entry['recovery_s'])
            entry['recovery_p50_s'], entry['recovery_max_s'] = s['p50'], s['max']
        return out

    def _policy_values(self) -> dict[str, Any]:
        values = self.probe.diag.get('policy_node', {})
        keys = ('enabled', 'chunks', 'commands_sent', 'inference_ms_p50', 'rejected_outputs', 'starved_ticks',
                'time_jumps', 'stale_inputs', 'blocked_ticks', 'last_error')  # fmt: skip
        out: dict[str, Any] = {k: values.get(k) for k in keys}
        supervisor = getattr(self.composition, 'supervisor', None)
        if supervisor is not None:
            out['restarts'] = supervisor.values(self.composition.children[0]).get('restarts')
        return out

    @staticmethod
    def _driver_values(driver: Any) -> dict[str, Any]:
        snap = driver.controller.snapshot()
        keep = ('connects', 'disconnects', 'failed_connects')
        return {k: v for k, v in snap.items() if (k in keep or k.startswith(('bus_', 'cmd_'))) and v}

    def _check_problems(self, goals: dict, processes: dict, recording: dict | None) -> list[str]:
        problems = []
        if goals['out_of_limits']:
            problems.append(f'{goals["out_of_limits"]} goal writes outside the joint limits')
        if goals['too_fast']:
            problems.append(f'{goals["too_fast"]} goal writes faster than max_velocity_rad_s')
        for name, proc in processes.items():
            growth = proc['rss_mb']['steady_growth_mb_per_hour']  # second half: a one-time step is not growth
            if proc['minutes'] >= MIN_FIT_MINUTES and math.isfinite(growth) and growth > RSS_TARGET_MB_PER_HOUR:
                problems.append(
                    f'{name}: resident memory grows {growth} MB/h over the second half of its '
                    f'{proc["minutes"]} min (target < {RSS_TARGET_MB_PER_HOUR:g})'
                )
        if recording:
            if recording.get('gaps_outside_faults'):
                problems.append(f'bag: {len(recording["gaps_outside_faults"])} gaps outside fault windows')
            if int(recording.get('dropped') or 0):
                problems.append(f'bag: the recorder dropped {recording["dropped"]} messages')
            if recording.get('problems'):
                problems.append(f'bag: {recording["problems"]}')
        return problems


def velocity_bound(driver: Any) -> float:
    """The goal speed bound the arm driver enforces (its filter's, else its arm config's), rad/s."""
    bound = getattr(driver.controller.filter, 'max_velocity_rad_s', None)
    return float(bound if bound is not None else driver.arm.max_velocity_rad_s)


def target_of(f: Fault) -> str:
    if f.kind == 'servo_missing':
        return f'{f.arm} servo {f.servo_id}'
    if f.kind in ('late_replies', 'corrupt_replies', 'port_vanish'):
        return f.arm
    if f.kind.startswith('camera_'):
        return f.camera
    return ''


def with_suppressed(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


# ------------------------------------------------------------------------------- main


def read_recording(bag: Path, soak: FaultSoak, offset: float) -> dict[str, Any]:
    """The bag read back (soak_bench.read_back) plus its gaps outside fault windows."""
    windows = [(s - soak.started, e - soak.started) for s, e in soak.windows]
    windows.append((-math.inf, (soak.healthy_at or math.inf) - soak.started))  # start-up: nodes still connecting
    gaps = bag_gaps(bag, soak.started + offset, windows, soak.args.max_gap_s, soak.cameras)
    return {**read_back(bag), **gaps}


def stop_recorder(recorder: subprocess.Popen, log: Any) -> None:
    recorder.send_signal(signal.SIGINT)  # closes the open file and metadata.yaml
    try:
        recorder.wait(120)
    finally:
        log.close()


def checkpoint_for(args: argparse.Namespace, work: Path) -> Path:
    if args.tiny:
        from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

        return make_tiny_checkpoint(work / 'tiny', rig=RIG, seed=0)
    from bimanual_vla.learning.demo import trained_checkpoint

    checkpoint = args.checkpoint or trained_checkpoint()
    if checkpoint is None:
        raise SystemExit('no shipped checkpoint installed: pass --checkpoint DIR or --tiny')
    return checkpoint


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy

    from bimanual_vla.config import load_policy, load_rig

    if args.record_dir is not None:  # made before anything starts, not found missing once the rig runs
        args.record_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='fault_soak_'))  # servo-bus files, tiny checkpoint, bag and its log
    checkpoint = checkpoint_for(args, work)
    rig = load_rig(RIG)
    # Ctrl-C and SIGTERM raise KeyboardInterrupt in this thread and nothing else: rclpy's own handler would shut
    # the context down under the soak (its clean-up could then publish nothing) and, depending on where the
    # main thread is, may not interrupt it at all, leaving the soak and its recorder running.
    from rclpy.signals import SignalHandlerOptions

    # Installed explicitly: a non-interactive shell starts `cmd &` with SIGINT ignored, and Python then adds none.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    probe = make_probe([a.name for a in rig.arms], [c.name for c in rig.cameras], load_policy('default').task)
    composition = compose_rig(args, checkpoint, probe, work / 'servo_bus')
    offset = time.time() - time.monotonic()
    bag = (args.record_dir or work) / 'bag'
    recorder, log = (None, None) if args.no_record else start_recorder(bag, args.record_split_s)
    pids = {'sim': os.getpid(), 'recorder': recorder.pid if recorder else None}
    runner = FaultSoak(args, composition, probe, pids)
    try:
        runner.run()
    except (Exception, KeyboardInterrupt) as exc:  # a dead bringup, a rig that never came up, Ctrl-C: reported
        runner.fatal = f'{type(exc).__name__}: {exc}'
    finally:
        runner.ended = time.monotonic()
        try:
            runner.clear_all()
        except Exception as exc:  # e.g. a context already shut down: report it, and still stop the recorder
            runner.problems.append(f'clearing the faults at the end failed: {type(exc).__name__}: {exc}')
        finally:  # the recorder, a process of its own, must never outlive the soak (it fills the disk)
            if recorder is not None:
                stop_recorder(recorder, log)
            composition.shutdown()
            rclpy.try_shutdown()
    recording = None
    if recorder is not None:
        try:
            recording = read_recording(bag, runner, offset)
        except Exception as exc:  # no bag, or one that cannot be read: that is the finding
            recording = {'problems': [f'cannot read the bag back: {type(exc).__name__}: {exc}']}
    report = runner.report(recording)
    report['checkpoint'] = 'tiny' if args.tiny else str(checkpoint)
    if args.keep_bag:
        report['bag'] = str(bag)
    else:
        shutil.rmtree(bag, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> int:
    args = parse_args()
    if args.summarise:
        lines = [json.loads(line) for line in args.summarise.read_text().splitlines() if line.strip()]
        print(json.dumps(summarise_segments(lines), indent=1))
        return 0
    report = soak(args)
    text = json.dumps(report, default=str)
    print(text)
    if args.report:
        with args.report.open('a') as f:
            f.write(text + '\n')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
