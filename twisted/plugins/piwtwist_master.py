from twisted.application.service import ServiceMaker

piwheels_master = ServiceMaker(
    "piwtwist master", "piwtwist.master.tap",
    "The piwtwist master: queues builds and publishes wheels",
    "piwheels-master")
