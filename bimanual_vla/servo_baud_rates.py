"""The baud rates each servo family can be set to, by the value of its baud-rate register.

Part of the contract: the rig file's `baudrate` is checked against it (config.py), the drivers and
`scan`/`setup-servo` turn a register value into a rate and back. Values from the manufacturers'
control tables: Feetech STS/SMS (register 6, e.g. STS3215; the `SMS_STS_*` baud constants of
Feetech's SCServo SDK) and Dynamixel X series protocol 2.0 (register 8, e.g. XL330, XL430, XM430).
LeRobot's Feetech table maps values 5-7 to 57600/38400/19200 instead of Feetech's 76800/57600/38400;
only a Feetech bus set to one of those slow rates is affected, and the SDK's values are kept here.
"""

from __future__ import annotations

FEETECH_BAUD_RATES: dict[int, int] = {
    0: 1_000_000,
    1: 500_000,
    2: 250_000,
    3: 128_000,
    4: 115_200,
    5: 76_800,
    6: 57_600,
    7: 38_400,
}

DYNAMIXEL_BAUD_RATES: dict[int, int] = {
    0: 9_600,
    1: 57_600,
    2: 115_200,
    3: 1_000_000,
    4: 2_000_000,
    5: 3_000_000,
    6: 4_000_000,
    7: 4_500_000,
}

BAUD_RATES: dict[str, dict[int, int]] = {'feetech': FEETECH_BAUD_RATES, 'dynamixel': DYNAMIXEL_BAUD_RATES}


def baud_register_value(protocol: str, baudrate: int) -> int:
    """The register value that sets `baudrate` on a `protocol` servo; ValueError naming the valid rates."""
    table = BAUD_RATES[protocol]
    for value, rate in table.items():
        if rate == baudrate:
            return value
    valid = ', '.join(str(rate) for rate in sorted(table.values()))
    raise ValueError(f'{baudrate} is not a {protocol} baud rate (one of {valid})')
