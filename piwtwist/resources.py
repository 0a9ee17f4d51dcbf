"""Find the SQL scripts and templates, from a checkout or an installed wheel.

The packaging maps the top-level ``sql/`` and ``templates/`` folders into the
package as ``piwtwist.sql`` and ``piwtwist.templates``; from a plain checkout
(nothing installed) they sit beside the package.
"""

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def resource_dir(name):
    """The directory holding the ``sql`` or ``templates`` resources."""
    try:
        found = resources.files(f"piwtwist.{name}")
    except ModuleNotFoundError:
        found = None
    if found is not None:
        path = Path(str(found))
        if path.is_dir():
            return path
    path = _CHECKOUT / name
    if path.is_dir():
        return path
    raise FileNotFoundError(f"piwtwist's {name}/ folder is missing from "
                            f"the installation (looked in {path})")


def sql_dir():
    return resource_dir("sql")


def templates_dir():
    return resource_dir("templates")
