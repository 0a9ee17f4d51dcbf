from twisted.application.service import ServiceMaker

piwheels_import = ServiceMaker(
    "piwtwist import", "piwtwist.admin.import_tap",
    "Import wheels built elsewhere into the master, then exit",
    "piwheels-import")
