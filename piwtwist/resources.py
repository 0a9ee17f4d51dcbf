"""Find the SQL scripts and templates, from a checkout or an installed wheel.

They live at the top of the checkout in ``sql/`` and ``templates/``;
``piwtwist/sql`` and ``piwtwist/templates`` are symbolic links to them, which
the packaging turns into real folders inside the wheel.  Either way they sit
beside this module.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name):
    """The directory holding the ``sql`` or ``templates`` resources."""
    path = _PACKAGE / name
    if not path.is_dir():
        raise FileNotFoundError(f"piwtwist's {name}/ folder is missing from "
                                f"the installation (looked in {path})")
    return path


def sql_dir():
    return resource_dir("sql")


def templates_dir():
    return resource_dir("templates")
