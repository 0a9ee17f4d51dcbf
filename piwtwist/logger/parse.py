"""Log lines to hits: apachelogs reads the line, :mod:`.classify` decides.

``apachelogs`` turns a LogFormat into a regular expression and one
converter per directive (unescaping, timestamps, numbers).  A log has
hundreds of thousands of lines a minute, so :class:`LineParser` uses those
pieces directly: it converts only the fields a hit needs, and remembers the
last few hundred timestamps and a few thousand User-Agents (a busy log
repeats them endlessly).  Anything the format does not match, a bad date, a
line over :data:`MAX_LINE` bytes, is a :class:`BrokenLine`.
"""

import functools
import re
from datetime import timezone

from apachelogs import COMBINED, COMMON, VHOST_COMMON
from apachelogs.directives import format2regex
from apachelogs.errors import Error as ApacheLogsError
from apachelogs.timeutil import assemble_datetime

from .classify import classify

FORMATS = {
    "combined": COMBINED,
    "common": COMMON,
    "common_vhost": VHOST_COMMON,
    "vhost_common": VHOST_COMMON,
}

#: Longer lines are broken: Apache's own request line limit is 8 KiB and a
#: User-Agent header is bounded by its 8 KiB header field limit.
MAX_LINE = 32768


# apachelogs matches every quoted field ("%r", "%{User-Agent}i", ...) with
# a lazy loop over single characters, which is most of the time spent on a
# line with a pip User-Agent.  Between quotes the same strings are matched,
# with the same groups, by runs of plain characters between escapes taken
# possessively: a field ends at the first unescaped quote either way.
_QUOTED_FIELD = r"(?:[ !\x23-\x5B\x5D-\x7E]|\\x[0-9A-Fa-f]{2}|\\.)*?"
_QUOTED_FIELD_FAST = (r"[ !\x23-\x5B\x5D-\x7E]*+(?:(?:\\x[0-9A-Fa-f]{2}|"
                      r"\\.)[ !\x23-\x5B\x5D-\x7E]*+)*+")


def faster_quoted_fields(regex):
    """apachelogs' *regex* with its quoted fields matched in runs."""
    for slow, fast in (
            (f'"((?:{_QUOTED_FIELD}|-))"', f'"((?:{_QUOTED_FIELD_FAST}|-))"'),
            (f'"({_QUOTED_FIELD})"', f'"({_QUOTED_FIELD_FAST})"')):
        regex = regex.replace(slow, fast)
    return regex


class BrokenLine(ValueError):
    """A line that is not a log entry of the expected format."""


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class LineParser:
    """Parses lines of one LogFormat (a name of :data:`FORMATS` or the
    format string itself) into hits."""

    def __init__(self, log_format="combined"):
        self.format = FORMATS.get(log_format, log_format)
        try:
            groups, regex = format2regex(self.format)
        except ApacheLogsError as e:
            raise ValueError(f"not a LogFormat apachelogs knows: {e}")
        self.regex = re.compile(faster_quoted_fields(regex))
        self.fields = {}
        time_fields = []
        for index, (name, directive, convert) in enumerate(groups, 1):
            key = name if isinstance(name, str) else \
                tuple(n.lower() for n in name)
            if key[0] == "request_time_fields":
                time_fields.append((index, key[1], convert))
            else:
                self.fields.setdefault(key, (index, convert))
        if not time_fields:
            raise ValueError("the format has no time of the request (%t)")
        self.time_fields = time_fields
        self.simple_time = (len(time_fields) == 1 and
                            time_fields[0][1] == "timestamp")
        self.host = self.fields.get("remote_address") or \
            self.fields.get("remote_host")
        self.request_line = self.fields.get("request_line")
        self.method = self.fields.get("request_method")
        self.uri = self.fields.get("request_uri")
        self.query = self.fields.get("request_query")
        self.status = self.fields.get("final_status") or \
            self.fields.get("status") or self.fields.get("original_status")
        self.agent = self.fields.get(("headers_in", "user-agent"))
        if self.request_line is None and (self.method is None or
                                          self.uri is None):
            raise ValueError("the format has neither the request line (%r) "
                             "nor its method and path (%m and %U)")
        if self.status is None:
            raise ValueError("the format has no status (%>s or %s)")
        self._timestamp = functools.lru_cache(maxsize=512)(self._timestamp)
        self._agent = functools.lru_cache(maxsize=8192)(self._agent)
        self._request = functools.lru_cache(maxsize=8192)(self._request)

    def _request(self, raw):
        """(method, path) of a raw request line."""
        request = _text(self.request_line[1](raw)) or ""
        method, _, rest = request.partition(" ")
        path = rest.rpartition(" ")[0] if " " in rest else rest
        return method, path

    def _host(self, raw):
        if "\\" not in raw:
            return raw     # nothing to unescape (and hosts rarely repeat)
        return _text(self.host[1](raw)) or ""

    def _timestamp(self, raw):
        convert = self.time_fields[0][2]
        moment = convert(raw)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()

    def _agent(self, raw):
        return _text(self.agent[1](raw))

    def _assembled_time(self, match):
        fields = {}
        for index, key, convert in self.time_fields:
            value = convert(match.group(index))
            if isinstance(value, dict):
                fields.update(value)
            elif fields.get(key) is None:
                fields[key] = value
        moment = assemble_datetime(fields)
        if moment is None:
            raise BrokenLine("incomplete time")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()

    def parse(self, line):
        """The hit *line* (a str, no line ending) makes, or None; raises
        :class:`BrokenLine`."""
        if len(line) > MAX_LINE:
            raise BrokenLine("too long")
        match = self.regex.fullmatch(line)
        if match is None:
            raise BrokenLine("not in the log format")
        group = match.group
        try:
            index, convert = self.status
            status = convert(group(index))
            if self.request_line is not None:
                method, path = self._request(group(self.request_line[0]))
            else:
                index, convert = self.method
                method = _text(convert(group(index))) or ""
                index, convert = self.uri
                path = _text(convert(group(index))) or ""
            if method != "GET" or status is None:
                return None
            if self.simple_time:
                moment = self._timestamp(group(self.time_fields[0][0]))
            else:
                moment = self._assembled_time(match)
            host = ""
            if self.host is not None:
                host = self._host(group(self.host[0]))
            agent = None
            if self.agent is not None:
                agent = self._agent(group(self.agent[0]))
        except (ValueError, TypeError, OverflowError, KeyError) as e:
            raise BrokenLine(str(e))
        return classify(method, path, status, agent, host, moment)


def split_lines(chunks, max_line=MAX_LINE):
    """Complete lines (bytes, without endings) from an iterable of byte
    chunks, as lists, one list per chunk; and a count of over-long lines
    dropped whole (yielded as ``(lines, overlong)``)."""
    rest = b""
    skipping = False
    for chunk in chunks:
        overlong = 0
        if skipping:
            end = chunk.find(b"\n")
            if end == -1:
                yield [], 0
                continue
            data = chunk[end + 1:]
            skipping = False
        else:
            data = rest + chunk if rest else chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) > max_line:
            overlong += 1
            skipping = True
            rest = b""
        kept = []
        for line in lines:
            if len(line) > max_line:
                overlong += 1
            else:
                kept.append(line)
        yield kept, overlong
    if rest:
        yield [rest], 0


def parse_chunk(parser, lines):
    """(hits, lines read, broken lines) for a list of byte lines."""
    hits = []
    broken = 0
    parse = parser.parse
    for raw in lines:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            continue
        try:
            hit = parse(raw.decode("latin-1"))
        except BrokenLine:
            broken += 1
            continue
        except Exception:
            broken += 1
            continue
        if hit is not None:
            hits.append(hit)
    return hits, len(lines), broken
