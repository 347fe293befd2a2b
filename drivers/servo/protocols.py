"""The packet codec of each servo family by name: what the bus and the emulator both look up."""

from __future__ import annotations

from bimanual_vla.drivers.servo.dynamixel_protocol import DYNAMIXEL
from bimanual_vla.drivers.servo.feetech_protocol import FEETECH
from bimanual_vla.drivers.servo.protocol_common import Protocol

PROTOCOLS: dict[str, Protocol] = {'feetech': FEETECH, 'dynamixel': DYNAMIXEL}


def protocol_for(name: str) -> Protocol:
    """The packet codec for ``name`` ('feetech' or 'dynamixel'); ValueError names the choices."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f'unknown servo protocol {name!r}; expected one of {sorted(PROTOCOLS)}') from None
