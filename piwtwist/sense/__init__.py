"""``twistd -n piwheels-sense``: the master's status on a Raspberry Pi
Sense HAT's 8x8 LED matrix, steered with its joystick."""
