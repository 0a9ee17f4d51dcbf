"""The site's generation: what the pages of the output tree are rendered
from, apart from the data.

Pages depend on the data (kept current by the page writer's queue, which
survives restarts, and by the tree audit at start) and on the code that
renders them: the templates, the modules that turn facts into pages and
JSON, and the database schema those facts come from.  The second part is
summed up in one hash, the generation, written to ``<output>/.generation``
once a full rewrite has finished.  At start the master rewrites every page
only when the generation it would render differs from the one on disk (an
upgrade, edited templates, or a full rewrite that never finished, since
the file is removed when one begins); otherwise it writes only what is
queued, missing or stale.

Delete the file to have the next start rewrite everything.
"""

import hashlib
from pathlib import Path

from ..db.schema import SCHEMA_VERSION
from ..resources import templates_dir
from . import layout

GENERATION_FILE = ".generation"

#: The modules whose code decides what a page says (with the templates).
_RENDERING_MODULES = ("render.py", "model.py", "layout.py", "metadata.py")


def site_generation(templates=None, schema_version=SCHEMA_VERSION):
    """The hash of everything but the data that pages are made from."""
    digest = hashlib.sha256()
    digest.update(f"schema {schema_version}\n".encode())
    templates = Path(templates or templates_dir())
    sources = [(f"templates/{p.name}", p) for p in sorted(templates.iterdir())
               if p.is_file()]
    here = Path(__file__).parent
    sources += [(f"piwtwist/web/{name}", here / name)
                for name in _RENDERING_MODULES]
    for name, path in sources:
        data = path.read_bytes()
        digest.update(f"{name} {len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def read_generation(output):
    """The generation the tree at *output* was last fully rendered with,
    or None."""
    try:
        return (Path(output) / GENERATION_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def write_generation(output, generation):
    layout.write_atomically(Path(output) / GENERATION_FILE,
                            (generation + "\n").encode())


def forget_generation(output):
    try:
        (Path(output) / GENERATION_FILE).unlink()
    except FileNotFoundError:
        pass
