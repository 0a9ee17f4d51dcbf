"""One project's facts as ``get_project_page`` sends them, and their
decoding.

``get_project_page`` answers in one row: a few plain values and five JSON
arrays of rows (versions, files, builds, dependencies, aliases) as TEXT.
psycopg2 turns an answer into Python objects on the thread that reads it,
the reactor's; a JSON column would be parsed there too, so the lists stay
text in :class:`ProjectPageRow` until :meth:`ProjectPageRow.decode` runs
in the page writer's thread pool.  The decoded values are the very records
the old per-list functions gave (``get_project_versions`` and friends),
so the pages cannot tell the difference.
"""

import json
from datetime import datetime, timedelta

import attrs

from .records import (
    Alias, Dependency, ProjectBuild, ProjectFile, ProjectVersion)


def _moment(text):
    """A ``timestamptz`` as PostgreSQL's JSON writes it (ISO 8601 with the
    session's offset)."""
    return None if text is None else datetime.fromisoformat(text)


@attrs.frozen
class ProjectPageRow:
    """``get_project_page``'s row for *package*, the lists still JSON."""

    package: str
    description: str
    skip: str
    downloads: tuple
    versions_json: str
    files_json: str
    builds_json: str
    dependencies_json: str
    aliases_json: str

    def build_ids(self):
        """The ids of the package's builds (whose logs the tree needs)."""
        return [build[0] for build in json.loads(self.builds_json)]

    def decode(self):
        """The keyword arguments of
        :func:`piwtwist.web.model.project_facts` that come from the
        database (CPU work: run it in a thread)."""
        versions = [
            ProjectVersion(
                version=version, released=_moment(released), skip=skip,
                yanked=yanked, yank_reason=yank_reason,
                requires_python=requires_python,
                builds_succeeded=tuple(succeeded),
                builds_failed=tuple(failed))
            for (version, released, skip, yanked, yank_reason,
                 requires_python, succeeded, failed)
            in json.loads(self.versions_json)]
        files = [ProjectFile(*row) for row in json.loads(self.files_json)]
        builds = [
            ProjectBuild(
                build_id=build_id, version=version, abi_tag=abi_tag,
                status=status, built_at=_moment(built_at),
                duration=timedelta(microseconds=microseconds),
                reason=reason, failure_class=failure_class,
                failure_hint=failure_hint, rescued=rescued)
            for (build_id, version, abi_tag, status, built_at, microseconds,
                 reason, failure_class, failure_hint, rescued)
            in json.loads(self.builds_json)]
        dependencies = {}
        for filename, tool, dependency in json.loads(self.dependencies_json):
            dependencies.setdefault(filename, []).append(
                Dependency(tool, dependency))
        aliases = [Alias(name, _moment(seen))
                   for name, seen in json.loads(self.aliases_json)]
        return {
            "description": self.description, "skip": self.skip,
            "versions": versions, "files": files, "builds": builds,
            "dependencies": {name: tuple(deps)
                             for name, deps in dependencies.items()},
            "aliases": aliases, "downloads": self.downloads,
        }
