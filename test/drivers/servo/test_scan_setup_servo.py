"""`scan` and `setup-servo` against emulated servos on a pty: a new bus, as a user meets it.

The emulator's servos hear only the baud rate their Baud_Rate register selects and answer a
broadcast PING one by one, so these commands are tested the way they meet hardware: by trying
the baud table. Each full-table search listens about a second per rate (the SDKs' window), so
those tests are marked slow.
"""

from __future__ import annotations

import pytest

from bimanual_vla.cli.main import main
from bimanual_vla.drivers.servo.bus import ServoBus
from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator


@pytest.mark.parametrize(('protocol', 'model'), [('feetech', 777), ('dynamixel', 1200)])
def test_bus_broadcast_ping_lists_every_servo_with_its_model(protocol: str, model: int) -> None:
    with ServoBusEmulator(protocol, [6, 2, 9], model_number=model, faults=FaultConfig(missing_ids={9})) as emu:
        with ServoBus(emu.port, protocol) as bus:
            assert bus.broadcast_ping() == {2: model, 6: model}
            assert bus.broadcast_garbled == 0
        with ServoBus(emu.port, protocol, 57_600) as bus:  # servos are at 1 Mbaud
            assert bus.broadcast_ping(window_s=0.2) == {}


# ------------------------------------------------------------------- scan
def test_scan_lists_ids_models_firmware_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('feetech', [1, 2, 3, 4, 5, 6]) as emu:
        assert main(['scan', '--port', emu.port, '--protocol', 'feetech', '--baudrate', '1000000']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'feetech @ 1000000 baud:'
    assert out[1:7] == [f'  id {i:3d}  sts3215 (model 777)  firmware 3.10' for i in range(1, 7)]
    assert out[7].startswith('6 servo(s) on ')


@pytest.mark.slow  # searches the whole baud table
def test_scan_tries_the_baud_table_for_a_factory_fresh_dynamixel(capsys: pytest.CaptureFixture[str]) -> None:
    # An XL330-M288 out of the box: id 1, 57600 baud.
    with ServoBusEmulator('dynamixel', [1], model_number=1200, baudrate=57_600) as emu:
        assert main(['scan', '--port', emu.port, '--protocol', 'dynamixel']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ['dynamixel @ 57600 baud:', '  id   1  xl330-m288 (model 1200)  firmware 46']


def test_scan_finds_nothing_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('feetech', [1], baudrate=57_600) as emu:
        assert main(['scan', '--port', emu.port, '--protocol', 'feetech', '--baudrate', '1000000']) == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.count('\n') == 1 and captured.err.startswith('no servo answered on ')
    assert 'feetech @ 1000000 baud' in captured.err


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--protocol', 'herkulex'], "error: --protocol: expected feetech or dynamixel, got 'herkulex'"),
        (
            ['--protocol', 'feetech', '--baudrate', 'fast'],
            "error: --baudrate: expected a whole number of baud, got 'fast'",
        ),
        (['--protocol', 'feetech', '--baudrate', '9600'], 'error: --baudrate: 9600 is not a feetech baud rate (one of'),
    ],
)
def test_scan_bad_input_is_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['scan', '--port', '/dev/null', *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count('\n') == 1


def test_scan_missing_port_is_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['scan', '--port', str(tmp_path / 'ttyACM9'), '--protocol', 'feetech', '--baudrate', '1000000']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --port: cannot open {tmp_path / "ttyACM9"}') and err.count('\n') == 1


# ------------------------------------------------------------ setup-servo
@pytest.mark.slow  # searches the whole baud table
def test_setup_servo_feetech_factory_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('feetech', [1]) as emu:
        servo = emu.servo(1)
        servo.write_register('lock', 1)
        servo.write_register('torque_enable', 1)
        code = main(['setup-servo', '--port', emu.port, '--protocol', 'feetech', '--id', '4', '--baudrate', '500000'])
        assert code == 0, capsys.readouterr()
        assert emu.ids == [4]
        assert servo.read_register('id') == 4
        assert servo.read_register('baud_rate') == 1  # 500 kbaud
        assert servo.baudrate == 500_000
        assert servo.read_register('lock') == 1  # EEPROM locked again: the values survive a power cycle
        assert not servo.torque_enabled
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(
            'sts3215 (firmware 3.10) on '
            + emu.port
            + ': id 1 -> 4, 1000000 -> 500000 baud; answers at the new id and rate'
        )
    )


@pytest.mark.slow  # searches the whole baud table
def test_setup_servo_dynamixel_turns_torque_off_for_the_eeprom(capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('dynamixel', [1], model_number=1060, baudrate=57_600) as emu:
        servo = emu.servo(1)
        servo.write_register('torque_enable', 1)  # with torque on, the X series refuses EEPROM writes
        code = main(['setup-servo', '--port', emu.port, '--protocol', 'dynamixel', '--id', '3'])
        assert code == 0, capsys.readouterr()
        assert emu.ids == [3]
        assert (servo.read_register('baud_rate'), servo.baudrate) == (3, 1_000_000)
    assert 'xl430-w250 (firmware 46)' in capsys.readouterr().out


@pytest.mark.slow  # searches the whole baud table
@pytest.mark.parametrize('second_baud', [1_000_000, 115_200])
def test_setup_servo_refuses_two_servos(second_baud: int, capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('feetech', [1, 2]) as emu:
        emu.servo(2).write_register('baud_rate', 4 if second_baud == 115_200 else 0)
        assert main(['setup-servo', '--port', emu.port, '--protocol', 'feetech', '--id', '5']) == 1
        assert emu.ids == [1, 2]
        assert emu.servo(1).read_register('baud_rate') == 0
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.count('\n') == 1
    assert captured.err.startswith(f'error: 2 servos answer on {emu.port} (id 1 at 1000000 baud; id 2 at {second_baud}')
    assert 'connect only the servo to set up' in captured.err


@pytest.mark.slow  # searches the whole baud table
def test_setup_servo_no_servo(capsys: pytest.CaptureFixture[str]) -> None:
    with ServoBusEmulator('feetech', [1], faults=FaultConfig(missing_ids={1})) as emu:
        assert main(['setup-servo', '--port', emu.port, '--protocol', 'feetech', '--id', '2']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: no feetech servo answered on ') and err.count('\n') == 1


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--protocol', 'feetech', '--id', 'x'], "error: --id: expected a servo id 0..253, got 'x'"),
        (['--protocol', 'dynamixel', '--id', '253'], 'error: --id: dynamixel servo ids are 0..252, got 253'),
        (['--protocol', 'feetech', '--id', '3', '--baudrate', '57601'], 'error: --baudrate: 57601 is not a feetech'),
        (['--protocol', 'sts', '--id', '3'], "error: --protocol: expected feetech or dynamixel, got 'sts'"),
    ],
)
def test_setup_servo_bad_input_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(['setup-servo', '--port', '/dev/null', *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count('\n') == 1


# ----------------------------------------------------------- emulate-bus
def test_emulate_bus_serves_a_factory_fresh_dynamixel_at_57600() -> None:
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'emulate-bus', '--protocol', 'dynamixel', '--ids', '1']
    proc = subprocess.Popen([*cmd, '--baudrate', '57600'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith('/dev/'), proc.stderr.read() if proc.poll() is not None else port
        with ServoBus(port, 'dynamixel', 57_600) as bus:
            assert bus.broadcast_ping(window_s=0.3) == {1: 1060}
        with ServoBus(port, 'dynamixel', 1_000_000) as bus:
            assert bus.broadcast_ping(window_s=0.3) == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run([*cmd, '--baudrate', '76800'], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr == (
        'error: --baudrate: 76800 is not a dynamixel baud rate '
        '(one of 9600, 57600, 115200, 1000000, 2000000, 3000000, 4000000, 4500000)\n'
    )
