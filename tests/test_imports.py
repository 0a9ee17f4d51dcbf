"""Which parts of piwtwist import which: a builder and the admin tools run
on machines without the master's database, and must not even import it."""

import json
import subprocess
import sys

import pytest


def modules_after_importing(*modules):
    """The piwtwist modules loaded once *modules* are imported in a fresh
    interpreter."""
    code = (f"import json, sys\n"
            f"for name in {list(modules)!r}:\n"
            f"    __import__(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules\n"
            f"                        if m.split('.')[0] == 'piwtwist')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.mark.parametrize("module", [
    "piwtwist.builder.client", "piwtwist.builder.tap",
    "piwtwist.admin.importer", "piwtwist.wheels", "piwtwist.names",
    "piwtwist.records", "piwtwist.logger.cli",
])
def test_builders_and_admin_tools_never_import_the_database(module):
    loaded = modules_after_importing(module)
    assert module in loaded
    assert [m for m in loaded
            if m == "piwtwist.db" or m.startswith("piwtwist.db.")] == []


def test_the_database_layer_still_offers_the_wire_records():
    from piwtwist import records
    from piwtwist.db import records as db_records
    assert db_records.BuildFile is records.BuildFile
    assert db_records.Dependency is records.Dependency
