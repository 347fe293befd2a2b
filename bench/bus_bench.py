"""Servo bus benchmark: sync-read + sync-write cycles of six servos on the pty emulator, ours vs. the SDKs.

Prints one JSON object. For each protocol it measures, against an emulator running
in its own process (``bimanual-vla emulate-bus``, so the client's CPU time is its own):

* ``ours`` / ``sdk``: cycles per second (one SYNC READ of present position from six
  servos + one SYNC WRITE of six goals), wall milliseconds and CPU seconds
  (``time.process_time``) per cycle;
* ``speedup``: our cycle rate over the SDK's;
* ``missing_servo``: wall milliseconds of one cycle when servo 3 (middle) or 6
  (last) does not answer, ours and the SDK's.

The emulator answers without wire delay, so these numbers measure the software on
each side; on a real 1 Mbaud bus the wire adds about 1 ms per cycle for both.

    .venv/bin/python bench/bus_bench.py [--seconds 2] [--protocols feetech dynamixel]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.drivers.servo.bus import ServoBus  # noqa: E402
from bimanual_vla.drivers.servo.control_table import CONTROL_TABLES  # noqa: E402

IDS = [1, 2, 3, 4, 5, 6]


@contextmanager
def emulator(protocol: str, drop: list[int] | None = None, in_process: bool = False) -> Iterator[str]:
    """An emulate-bus subprocess (or, ``in_process``, an emulator thread in this process); yields its pty path."""
    if in_process:
        from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

        with ServoBusEmulator(protocol, IDS, faults=FaultConfig(missing_ids=set(drop or []))) as emu:
            yield emu.port
        return
    cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'emulate-bus', '--protocol', protocol, '--ids', '1-6']
    if drop:
        cmd += ['--drop', ','.join(map(str, drop))]
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        port = proc.stdout.readline().strip()
        if not port:
            raise RuntimeError(f'emulate-bus did not start (exit {proc.wait()})')
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def measure(cycle: Callable[[], None], seconds: float, min_cycles: int = 5) -> dict[str, float]:
    for _ in range(min(20, min_cycles)):  # warm up
        cycle()
    n = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while n < min_cycles or time.perf_counter() - wall0 < seconds:
        cycle()
        n += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        'cycles': n,
        'cycles_per_s': round(n / wall, 1),
        'wall_ms_per_cycle': round(1000 * wall / n, 4),
        'cpu_s_per_cycle': round(cpu / n, 7),
    }


# ------------------------------------------------------------------- ours
def our_cycle(bus: ServoBus) -> Callable[[], None]:
    table = bus.control_table
    pos, goal = table.present_position, table.goal_position
    goals = {i: table.encode(goal, 2048) for i in IDS}

    def cycle() -> None:
        bus.sync_read(IDS, pos.address, pos.length)
        bus.sync_write(goal.address, goals)

    return cycle


def bench_ours(protocol: str, seconds: float, in_process: bool = False) -> dict[str, float]:
    with emulator(protocol, in_process=in_process) as port, ServoBus(port, protocol) as bus:
        result = measure(our_cycle(bus), seconds)
        result['timeouts'] = bus.counters.timeouts
        return result


def missing_ours(protocol: str, drop: int, cycles: int = 20) -> float:
    with emulator(protocol, [drop]) as port, ServoBus(port, protocol) as bus:
        return measure(our_cycle(bus), 0.0, cycles)['wall_ms_per_cycle']


# -------------------------------------------------------------------- SDKs
def sdk_cycle(protocol: str, port_name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    table = CONTROL_TABLES[protocol]
    pos, goal = table.present_position, table.goal_position
    if protocol == 'feetech':
        import scservo_sdk as sdk

        port = sdk.PortHandler(port_name)
        handler = sdk.PacketHandler(0)
    else:
        import dynamixel_sdk as sdk

        port = sdk.PortHandler(port_name)
        handler = sdk.PacketHandler(2.0)
    if not (port.openPort() and port.setBaudRate(1_000_000)):
        raise RuntimeError(f'SDK could not open {port_name}')
    reader = sdk.GroupSyncRead(port, handler, pos.address, pos.length)
    writer = sdk.GroupSyncWrite(port, handler, goal.address, goal.length)
    for i in IDS:
        reader.addParam(i)
        writer.addParam(i, list(table.encode(goal, 2048)))

    def cycle() -> None:
        reader.txRxPacket()
        for i in IDS:
            reader.getData(i, pos.address, pos.length)
        for i in IDS:
            writer.changeParam(i, list(table.encode(goal, 2048)))
        writer.txPacket()

    return cycle, port.closePort


def bench_sdk(protocol: str, seconds: float, in_process: bool = False) -> dict[str, float]:
    with emulator(protocol, in_process=in_process) as port:
        cycle, close = sdk_cycle(protocol, port)
        try:
            return measure(cycle, seconds)
        finally:
            close()


def missing_sdk(protocol: str, drop: int, cycles: int = 5) -> float:
    with emulator(protocol, [drop]) as port:
        cycle, close = sdk_cycle(protocol, port)
        try:
            return measure(cycle, 0.0, cycles)['wall_ms_per_cycle']
        finally:
            close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=float, default=2.0, help='measuring time per configuration')
    parser.add_argument('--protocols', nargs='+', default=['feetech', 'dynamixel'], choices=['feetech', 'dynamixel'])
    args = parser.parse_args()
    report: dict[str, object] = {
        'benchmark': 'servo bus: sync read + sync write of 6 servos per cycle, emulator on a pty in another process',
        'python': platform.python_version(),
        'cpus': os.cpu_count(),
        'load_average_1min': round(os.getloadavg()[0], 2),
    }
    for protocol in args.protocols:
        ours = bench_ours(protocol, args.seconds)
        sdk = bench_sdk(protocol, args.seconds)
        report[protocol] = {
            'ours': ours,
            'sdk': sdk,
            'speedup': round(ours['cycles_per_s'] / sdk['cycles_per_s'], 2),
            'cpu_ratio_sdk_over_ours': round(sdk['cpu_s_per_cycle'] / ours['cpu_s_per_cycle'], 2),
            # The emulator as a thread of this process: stands in for the other Python threads of a driver
            # node (executor, publishers). A client that spins holding the GIL starves them.
            'in_process': {
                'ours_cycles_per_s': bench_ours(protocol, args.seconds, in_process=True)['cycles_per_s'],
                'sdk_cycles_per_s': bench_sdk(protocol, args.seconds, in_process=True)['cycles_per_s'],
            },
            'missing_servo_ms_per_cycle': {
                'ours_servo3_missing': missing_ours(protocol, 3),
                'ours_servo6_missing': missing_ours(protocol, 6),
                'sdk_servo3_missing': missing_sdk(protocol, 3),
                'sdk_servo6_missing': missing_sdk(protocol, 6),
            },
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
