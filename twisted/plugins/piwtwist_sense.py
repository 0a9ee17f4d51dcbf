from twisted.application.service import ServiceMaker

piwheels_sense = ServiceMaker(
    "piwtwist sense", "piwtwist.sense.tap",
    "The master's status on a Raspberry Pi Sense HAT, steered with its "
    "joystick", "piwheels-sense")
