from twisted.application.service import ServiceMaker

piwheels_builder = ServiceMaker(
    "piwtwist builder", "piwtwist.builder.tap",
    "A piwtwist builder: builds the wheels the master asks for",
    "piwheels-builder")
