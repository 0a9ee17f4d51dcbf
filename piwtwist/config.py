"""Command-line and configuration-file options shared by every piwtwist tool.

Every tool (the twistd plugins and plain console scripts such as
``piw-initdb``) subclasses :class:`ToolOptions`, names its INI section in
``config_section`` and declares ``optParameters``/``optFlags``/``opt_*``
methods as usual with :mod:`twisted.python.usage`.  Values then come from,
lowest priority first:

1. the defaults declared in ``optParameters``;
2. INI files: ``[DEFAULT]`` (shared by all tools), then the tool's own
   section; with no ``-c`` the files in ``default_config_files`` that exist,
   later ones overriding earlier ones; with ``-c FILE`` only that file;
3. the command line.

File values go through the same ``coerce`` callables and ``opt_*`` methods as
command-line values, so validation is identical wherever a value comes from.
A file that cannot be parsed, or a value that fails validation, is a
:class:`~twisted.python.usage.UsageError` naming the file and the line or
key.  Unknown keys in the tool's own section produce a warning only, because
one file is shared by several tools.

Repeatable options are ``optParameters`` entries whose long names are listed
in ``list_options``: every ``--name VALUE`` on the command line appends one
value, and an INI value is split on whitespace and commas.
"""

import configparser
import difflib
import getopt
import os
import re
import sys

from twisted.python import reflect, usage

import piwtwist

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Keys that make no sense in a file: they would read files or exit.
_NOT_IN_FILES = frozenset({"config", "help", "version"})

# The log level is one setting spelt as two flags; see _scan_command_line.
_LEVEL_FLAGS = ("quiet", "verbose")

# ConfigParser treats its default_section specially; we want to handle
# [DEFAULT] ourselves (to warn only about keys in the tool's own section), so
# give ConfigParser a name no file will use.
_NO_DEFAULT_SECTION = "\0piwtwist-no-default-section"

_LIST_SEPARATOR = re.compile(r"[\s,]+")


def _expand_path(value):
    """Make a path absolute now, because twistd may chdir before it is used,
    and expand ``~`` because a file value never passes through a shell."""
    return os.path.abspath(os.path.expanduser(value))


def split_list(value):
    """Split an INI value for a list option on whitespace and commas."""
    return [item for item in _LIST_SEPARATOR.split(value) if item]


class _ListParameter(usage.CoerceParameter):
    """Coerce each value of a repeatable option and append it to a list.

    The first value from a source replaces the default (or the list from an
    earlier file) instead of extending it.
    """

    def dispatch(self, parameterName, value):
        if value is None:
            raise usage.UsageError(
                f"Parameter '{parameterName}' requires an argument.")
        try:
            value = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"Parameter type enforcement failed: {e}")
        self.append(parameterName, value)

    def append(self, name, value):
        options = self.options
        if name not in options._lists_started:
            options._lists_started.add(name)
            options.opts[name] = []
        options.opts[name].append(value)


class _FileValueError(Exception):
    """A value from a file failed coercion; the caller adds where it was."""


class ToolOptions(usage.Options):
    """Base options of every piwtwist tool.

    Subclasses set ``config_section`` (e.g. ``"master"``) and may list
    repeatable ``optParameters`` in ``list_options``::

        class Options(ToolOptions):
            config_section = "builder"
            list_options = ["build-abi"]
            optParameters = [["build-abi", None, None, "ABI to build."]]

    ``self["build-abi"]`` is then always a list (``[]`` for a ``None``
    default; a string default is split like a file value).
    ``default_config_files`` and ``warning_stream`` (``None`` for stderr)
    exist so tests can point them elsewhere.
    """

    config_section = None
    list_options = []
    default_config_files = (
        "/etc/piwheels.conf",
        "/usr/local/etc/piwheels.conf",
        "~/.config/piwheels/piwheels.conf",
    )

    optFlags = [
        ["quiet", "q", "Log only warnings and errors."],
        ["verbose", "v", "Log debug messages too."],
    ]
    optParameters = [
        ["config", "c", None,
         "Read configuration from FILE only, instead of the default files "
         "(/etc/piwheels.conf, /usr/local/etc/piwheels.conf, "
         "~/.config/piwheels/piwheels.conf).", _expand_path],
        ["log-file", "l", None, "Also append the log to FILE.", _expand_path],
    ]

    def __init__(self):
        super().__init__()
        self.warning_stream = None  # None means sys.stderr at write time
        self.config_files_read = []
        self._lists_started = set()
        names = []
        reflect.accumulateClassList(self.__class__, "list_options", names)
        for name in names:
            handler = self._dispatch.get(name)
            if not isinstance(handler, usage.CoerceParameter):
                raise ValueError(
                    f"list option {name!r} must be the long name of an "
                    f"optParameters entry without an opt_ method")
            self._dispatch[name] = _ListParameter(self, handler.coerce)
            default = self.defaults[name]
            if default is None:
                default = []
            elif isinstance(default, str):
                default = split_list(default)
            self.opts[name] = list(default)

    def opt_version(self):
        """Display the piwtwist version and exit."""
        print(f"piwtwist {piwtwist.__version__}")
        sys.exit(0)

    def parseOptions(self, options=None):
        """Read the configuration files, then parse the command line over
        them, skipping file values for options given on the command line."""
        if options is None:
            options = sys.argv[1:]
        if len(options) > 1 and options[-2] == "--_shell-completion":
            return super().parseOptions(options)
        given = self._scan_command_line(options)
        if not given & {"help", "version"}:
            self._read_config_files(given)
        self._lists_started.clear()
        super().parseOptions(options)

    def _scan_command_line(self, args):
        """Return the long names of the options given on the command line.

        Uses the same getopt call as Options.parseOptions but runs no
        handlers, except that ``--config`` is stored because it decides which
        files to read.
        """
        try:
            opts, _ = getopt.getopt(args, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        given = set()
        for opt, arg in opts:
            opt = opt[2:] if opt.startswith("--") else opt[1:]
            name = self.synonyms.get(opt)
            if name is None:
                name = self.synonyms.get(opt.replace("-", "_"))
            if name is None:
                raise usage.UsageError(f"No such option '{opt}'")
            given.add(name)
            if name == "config":
                self._dispatch_value(name, arg)
        if set(_LEVEL_FLAGS) <= given:
            raise usage.UsageError(
                "-q/--quiet and -v/--verbose cannot be used together.")
        if given & set(_LEVEL_FLAGS):
            # Either flag on the command line sets the whole log level.
            given.update(_LEVEL_FLAGS)
        return given

    def _config_paths(self):
        if self["config"] is not None:
            if not os.path.exists(self["config"]):
                raise usage.UsageError(
                    f"configuration file {self['config']} does not exist.")
            return [self["config"]]
        paths = (os.path.expanduser(p) for p in self.default_config_files)
        return [p for p in paths if os.path.exists(p)]

    def _read_config_files(self, given):
        keys = self._file_keys()
        for path in self._config_paths():
            parser = _parse_file(path)
            self.config_files_read.append(path)
            if parser.has_section("DEFAULT"):
                self._apply_section(path, parser, "DEFAULT", keys, given,
                                    warn_unknown=False)
            if self.config_section and parser.has_section(self.config_section):
                self._apply_section(path, parser, self.config_section, keys,
                                    given, warn_unknown=True)

    def _file_keys(self):
        """Map every long option name, with ``-`` for ``_``, to its canonical
        name."""
        keys = {}
        for alias, name in self.synonyms.items():
            if len(alias) > 1 and name not in _NOT_IN_FILES:
                keys[alias.replace("_", "-")] = name
        return keys

    def _apply_section(self, path, parser, section, keys, given,
                       warn_unknown):
        levels_set = []
        for key, value in parser.items(section):
            name = keys.get(key.replace("_", "-"))
            if name is None:
                if warn_unknown:
                    self._warn_unknown_key(path, section, key, keys)
                continue
            if name in given:
                continue
            where = f"{path}, section [{section}], key '{key}'"
            try:
                set_to = self._apply_file_value(name, value)
            except _FileValueError as e:
                raise usage.UsageError(f"{where}: {e}")
            except usage.UsageError as e:
                raise usage.UsageError(f"{where}: {e}")
            if name in _LEVEL_FLAGS and set_to:
                levels_set.append(name)
        if len(levels_set) > 1:
            raise usage.UsageError(
                f"{path}, section [{section}]: quiet and verbose cannot both "
                f"be set.")
        for name in levels_set:
            # The later file or section sets the whole log level.
            for other in _LEVEL_FLAGS:
                if other != name:
                    self.opts[other] = 0

    def _apply_file_value(self, name, value):
        """Store one file value through the option's own handler; return
        whether a flag was switched on."""
        if self._is_flag(name):
            state = configparser.ConfigParser.BOOLEAN_STATES.get(
                value.strip().lower())
            if state is None:
                raise _FileValueError(
                    f"expected yes/no, true/false, on/off or 1/0, "
                    f"not {value!r}")
            if state:
                self._dispatch_value(name, "")
            elif self._dispatch[name] == self._generic_flag:
                self.opts[name] = 0
            # A flag with its own opt_ method cannot be switched off.
            return state
        handler = self._dispatch[name]
        if isinstance(handler, _ListParameter):
            self.opts[name] = []
            self._lists_started.add(name)
            for item in split_list(value):
                handler.append(name, _coerce(handler, item))
        elif isinstance(handler, usage.CoerceParameter):
            self.opts[name] = _coerce(handler, value)
        else:
            handler(name, value)
        return False

    def _is_flag(self, name):
        method = getattr(self, "opt_" + name.replace("-", "_"), None)
        if method is not None:
            return usage.flagFunction(method, name)
        return not isinstance(self._dispatch[name], usage.CoerceParameter)

    def _dispatch_value(self, name, value):
        """Hand a value to an option exactly as Options.parseOptions does."""
        handler = self._dispatch[name]
        if isinstance(handler, usage.CoerceParameter):
            handler.dispatch(name, value)
        else:
            handler(name, value)

    def _warn_unknown_key(self, path, section, key, keys):
        message = (f"warning: {path}: unknown key '{key}' in section "
                   f"[{section}]")
        match = difflib.get_close_matches(key.replace("_", "-"), keys, n=1)
        if match:
            message += f"; did you mean '{match[0]}'?"
        stream = self.warning_stream
        if stream is None:
            stream = sys.stderr
        stream.write(message + "\n")


def _coerce(handler, value):
    try:
        return handler.coerce(value)
    except ValueError as e:
        raise _FileValueError(f"invalid value {value!r}: {e}")


def _parse_file(path):
    """Parse one INI file, turning every way it can be broken into a
    UsageError that names the file and, where known, the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise usage.UsageError(
            f"{path}: cannot read configuration file: {e.strerror}.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise usage.UsageError(f"{path}, line {line}: not valid UTF-8 text.")
    parser = configparser.ConfigParser(
        interpolation=None, default_section=_NO_DEFAULT_SECTION)
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as e:
        raise usage.UsageError(
            f"{path}, line {e.lineno}: expected a [section] header before "
            f"the first setting.")
    except configparser.ParsingError as e:
        line = e.errors[0][0]
        raise usage.UsageError(
            f"{path}, line {line}: expected 'key = value' or a [section] "
            f"header.")
    except configparser.DuplicateOptionError as e:
        raise usage.UsageError(
            f"{path}, line {e.lineno}: key '{e.option}' appears twice in "
            f"section [{e.section}].")
    except configparser.DuplicateSectionError as e:
        raise usage.UsageError(
            f"{path}, line {e.lineno}: section [{e.section}] appears twice.")
    except configparser.Error as e:
        raise usage.UsageError(f"{path}: {e.message}")
    return parser


def confirm(question, assume_yes, ask=input, out=None):
    """Ask a yes/no *question* (no means no: anything but y or yes, and
    end of input)."""
    if assume_yes:
        return True
    try:
        answer = ask(f"{question} [y/N] ")
    except EOFError:
        (sys.stdout if out is None else out).write("\n")
        return False
    return answer.strip().lower() in ("y", "yes")


def run_tool(options_class, argv, main, stderr=None):
    """Parse ``argv`` (``sys.argv`` style) and return ``main(options)``'s exit
    code, so every console script reports usage errors the same way.

    ``main`` returns an exit code (``None`` means success); a UsageError
    from parsing or from ``main`` is printed as ``prog: message`` with a hint
    and gives ``EXIT_USAGE``.
    """
    stderr = sys.stderr if stderr is None else stderr
    prog = os.path.basename(argv[0])
    options = options_class()
    try:
        options.parseOptions(argv[1:])
        result = main(options)
    except usage.UsageError as e:
        stderr.write(f"{prog}: {e}\nTry '{prog} --help' for more "
                     f"information.\n")
        return EXIT_USAGE
    return EXIT_SUCCESS if result is None else result
