"""Tests for piwtwist.config: where option values come from, and how broken
configuration is reported."""

import io

import pytest
from twisted.python import usage

from piwtwist.config import (
    EXIT_SUCCESS,
    EXIT_USAGE,
    ToolOptions,
    run_tool,
    split_list,
)


def _port(value):
    value = int(value)
    if not 0 < value < 65536:
        raise ValueError(f"port {value} out of range")
    return value


class MasterOptions(ToolOptions):
    """A tool much like the master, with every kind of option."""

    config_section = "master"
    list_options = ["build-abi"]
    optFlags = [["dry-run", "n", "Do nothing."]]
    optParameters = [
        ["dsn", "d", "postgresql:///piwheels", "Database."],
        ["output-path", "o", "/var/www", "Where wheels go."],
        ["port", "p", 5555, "Port.", _port],
        ["build-abi", None, "cp311", "ABI tag to build (repeatable)."],
        ["timeout", None, 60, "Seconds.", int],
    ]

    def __init__(self):
        super().__init__()
        self.pypi_calls = []

    def opt_pypi_url(self, value):
        """Where PyPI is."""
        if not value.startswith(("http://", "https://")):
            raise usage.UsageError(f"{value!r} is not an http(s) URL")
        self.pypi_calls.append(value)
        self["pypi-url"] = value


@pytest.fixture
def write(tmp_path):
    """Write an INI file under tmp_path and return its path as a string."""
    def write(text, name="piwheels.conf"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def make_options(tmp_path):
    """Build options that read no real default files and warn into a
    buffer."""
    def make_options(cls=MasterOptions, default_files=()):
        options = cls()
        options.default_config_files = tuple(default_files)
        options.warning_stream = io.StringIO()
        return options
    return make_options


def parse(options, *args):
    options.parseOptions(list(args))
    return options


def test_defaults_without_files(make_options):
    options = parse(make_options())
    assert options["dsn"] == "postgresql:///piwheels"
    assert options["port"] == 5555
    assert options["build-abi"] == ["cp311"]
    assert options["quiet"] == 0 and options["verbose"] == 0
    assert options["log-file"] is None
    assert options.config_files_read == []


def test_file_overrides_defaults(make_options, write):
    path = write("[master]\ndsn = postgresql://db/piw\nport = 6000\n")
    options = parse(make_options(), "-c", path)
    assert options["dsn"] == "postgresql://db/piw"
    assert options["port"] == 6000
    assert options["output-path"] == "/var/www"
    assert options.config_files_read == [path]


def test_command_line_overrides_file(make_options, write):
    path = write("[master]\ndsn = from-file\nport = 6000\n")
    options = parse(make_options(), "-c", path, "--port", "7000")
    assert options["port"] == 7000
    assert options["dsn"] == "from-file"


def test_command_line_value_is_not_revalidated_against_file(make_options,
                                                             write):
    """A bad file value for an option given on the command line is never
    used, so it does not stop the tool."""
    path = write("[master]\nport = not-a-number\n")
    options = parse(make_options(), "-c", path, "-p", "7000")
    assert options["port"] == 7000


def test_underscore_and_dash_keys_are_equivalent(make_options, write):
    path = write("[master]\noutput_path = /srv/a\n[other]\n")
    assert parse(make_options(), "-c", path)["output-path"] == "/srv/a"
    path = write("[master]\noutput-path = /srv/b\n", name="b.conf")
    assert parse(make_options(), "-c", path)["output-path"] == "/srv/b"


def test_other_sections_are_ignored(make_options, write):
    path = write("[builder]\nport = 1\nfoo = bar\n[master]\ntimeout = 5\n")
    options = parse(make_options(), "-c", path)
    assert options["port"] == 5555
    assert options["timeout"] == 5
    assert options.warning_stream.getvalue() == ""


def test_default_section_is_shared_and_overridden(make_options, write):
    path = write(
        "[DEFAULT]\ndsn = shared\nport = 6000\nbuilder_only = 1\n"
        "[master]\nport = 6001\n")
    options = parse(make_options(), "-c", path)
    assert options["dsn"] == "shared"
    assert options["port"] == 6001
    # Unknown keys in [DEFAULT] belong to other tools: no warning.
    assert options.warning_stream.getvalue() == ""


def test_default_files_read_in_order(make_options, write, tmp_path):
    first = write("[master]\ndsn = first\nport = 6000\n", name="etc.conf")
    second = write("[master]\ndsn = second\n", name="home/piw.conf")
    missing = str(tmp_path / "missing.conf")
    options = parse(make_options(default_files=[first, missing, second]))
    assert options["dsn"] == "second"
    assert options["port"] == 6000
    assert options.config_files_read == [first, second]


def test_default_file_list_is_the_documented_one():
    assert ToolOptions.default_config_files == (
        "/etc/piwheels.conf",
        "/usr/local/etc/piwheels.conf",
        "~/.config/piwheels/piwheels.conf",
    )


def test_default_files_expand_home(make_options, write, tmp_path,
                                   monkeypatch):
    write("[master]\ndsn = home\n", name="home/.config/piw.conf")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options = parse(make_options(default_files=["~/.config/piw.conf"]))
    assert options["dsn"] == "home"


def test_config_option_reads_only_that_file(make_options, write):
    default = write("[master]\ndsn = default\nport = 6000\n", name="d.conf")
    chosen = write("[master]\ntimeout = 9\n", name="c.conf")
    options = parse(make_options(default_files=[default]), "--config", chosen)
    assert options["dsn"] == "postgresql:///piwheels"
    assert options["port"] == 5555
    assert options["timeout"] == 9
    assert options.config_files_read == [chosen]


def test_config_option_missing_file(make_options, tmp_path):
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", missing)
    assert str(e.value) == f"configuration file {missing} does not exist."


def test_config_path_is_made_absolute(make_options, write, tmp_path,
                                      monkeypatch):
    write("[master]\ndsn = relative\n", name="rel.conf")
    monkeypatch.chdir(tmp_path)
    options = parse(make_options(), "-c", "rel.conf")
    assert options["config"] == str(tmp_path / "rel.conf")
    assert options["dsn"] == "relative"


def test_help_does_not_read_broken_files(make_options, write, capsys):
    broken = write("no section here\n")
    with pytest.raises(SystemExit) as e:
        parse(make_options(default_files=[broken]), "--help")
    assert e.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_unknown_key_warns_with_suggestion(make_options, write):
    path = write("[master]\nouput_path = /srv\nzzz = 1\n")
    options = parse(make_options(), "-c", path)
    assert options.warning_stream.getvalue().splitlines() == [
        f"warning: {path}: unknown key 'ouput_path' in section [master]; "
        f"did you mean 'output-path'?",
        f"warning: {path}: unknown key 'zzz' in section [master]",
    ]
    assert options["output-path"] == "/var/www"


def test_config_key_in_file_is_unknown(make_options, write):
    """A file cannot name another file (or ask for --help)."""
    path = write("[master]\nconfig = /etc/other.conf\nhelp = yes\n")
    options = parse(make_options(), "-c", path)
    warnings = options.warning_stream.getvalue()
    assert "unknown key 'config'" in warnings
    assert "unknown key 'help'" in warnings


def test_unknown_key_warning_goes_to_stderr_by_default(write, capsys):
    path = write("[master]\nbogus = 1\n")
    options = MasterOptions()
    options.parseOptions(["-c", path])
    assert "unknown key 'bogus' in section [master]" in capsys.readouterr().err


@pytest.mark.parametrize("text, line, problem", [
    ("dsn = x\n[master]\n", 1,
     "expected a [section] header before the first setting."),
    ("[master]\ndsn = x\n\n# comment\njust words\n", 5,
     "expected 'key = value' or a [section] header."),
    ("[master]\ndsn = x\nport = 1\ndsn = y\n", 4,
     "key 'dsn' appears twice in section [master]."),
    ("[master]\ndsn = x\n[builder]\n[master]\n", 4,
     "section [master] appears twice."),
    (b"[master]\ndsn = caf\xe9\n", 2, "not valid UTF-8 text."),
])
def test_broken_file_names_file_and_line(make_options, write, text, line,
                                         problem):
    path = write(text)
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value) == f"{path}, line {line}: {problem}"


def test_broken_default_file_is_an_error(make_options, write):
    path = write("[master\n")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(default_files=[path]))
    assert str(e.value).startswith(f"{path}, line 1: ")


def test_unreadable_file(make_options, tmp_path):
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", str(directory))
    assert str(e.value).startswith(
        f"{directory}: cannot read configuration file: ")


def test_utf8_with_bom_is_accepted(make_options, write):
    path = write("\ufeff[master]\ndsn = café\n".encode("utf-8"))
    assert parse(make_options(), "-c", path)["dsn"] == "café"


def test_coercion_error_names_file_section_and_key(make_options, write):
    path = write("[master]\nport = lots\n")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value) == (
        f"{path}, section [master], key 'port': invalid value 'lots': "
        f"invalid literal for int() with base 10: 'lots'")


def test_file_values_use_the_same_coerce_as_the_command_line(make_options,
                                                              write):
    path = write("[master]\nport = 70000\n")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value).endswith("port 70000 out of range")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "--port", "70000")
    assert "port 70000 out of range" in str(e.value)


def test_file_values_go_through_opt_methods(make_options, write):
    path = write("[master]\npypi_url = https://pypi.example/\n")
    options = parse(make_options(), "-c", path)
    assert options["pypi-url"] == "https://pypi.example/"
    assert options.pypi_calls == ["https://pypi.example/"]

    path = write("[master]\npypi-url = ftp://pypi.example/\n", name="b.conf")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value) == (
        f"{path}, section [master], key 'pypi-url': "
        f"'ftp://pypi.example/' is not an http(s) URL")


def test_command_line_opt_method_overrides_file(make_options, write):
    path = write("[master]\npypi_url = https://file.example/\n")
    options = parse(make_options(), "-c", path,
                    "--pypi-url", "https://cli.example/")
    assert options["pypi-url"] == "https://cli.example/"
    # The file's value was never handed to the opt_ method.
    assert options.pypi_calls == ["https://cli.example/"]


@pytest.mark.parametrize("value, expected", [
    ("yes", 1), ("true", 1), ("on", 1), ("1", 1), ("YES", 1),
    ("no", 0), ("false", 0), ("off", 0), ("0", 0),
])
def test_flags_from_file(make_options, write, value, expected):
    path = write(f"[master]\ndry_run = {value}\n")
    assert parse(make_options(), "-c", path)["dry-run"] == expected


def test_later_file_switches_flag_off(make_options, write):
    first = write("[master]\ndry-run = yes\n", name="a.conf")
    second = write("[master]\ndry-run = no\n", name="b.conf")
    options = parse(make_options(default_files=[first, second]))
    assert options["dry-run"] == 0


def test_bad_flag_value(make_options, write):
    path = write("[master]\ndry-run = maybe\n")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value) == (
        f"{path}, section [master], key 'dry-run': expected yes/no, "
        f"true/false, on/off or 1/0, not 'maybe'")


def test_list_option_from_file(make_options, write):
    path = write("[master]\nbuild_abi = cp39, cp310\n    cp311,cp312\n")
    options = parse(make_options(), "-c", path)
    assert options["build-abi"] == ["cp39", "cp310", "cp311", "cp312"]


def test_list_option_empty_in_file(make_options, write):
    path = write("[master]\nbuild-abi =\n")
    assert parse(make_options(), "-c", path)["build-abi"] == []


def test_list_option_later_file_replaces_earlier(make_options, write):
    first = write("[master]\nbuild-abi = cp39 cp310\n", name="a.conf")
    second = write("[master]\nbuild-abi = cp312\n", name="b.conf")
    options = parse(make_options(default_files=[first, second]))
    assert options["build-abi"] == ["cp312"]


def test_list_option_repeated_on_command_line(make_options, write):
    path = write("[master]\nbuild-abi = cp39 cp310\n")
    options = parse(make_options(), "-c", path,
                    "--build-abi", "cp311", "--build-abi=cp312")
    assert options["build-abi"] == ["cp311", "cp312"]


def test_list_option_items_are_coerced(make_options, write):
    class Ports(ToolOptions):
        config_section = "monitor"
        list_options = ["port"]
        optParameters = [["port", None, None, "Port.", _port]]

    options = parse(make_options(Ports))
    assert options["port"] == []
    path = write("[monitor]\nport = 80, 443\n")
    assert parse(make_options(Ports), "-c", path)["port"] == [80, 443]
    assert parse(make_options(Ports), "--port", "1", "--port", "2")["port"] \
        == [1, 2]
    path = write("[monitor]\nport = 80, 0\n", name="bad.conf")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(Ports), "-c", path)
    assert str(e.value) == (
        f"{path}, section [monitor], key 'port': invalid value '0': "
        f"port 0 out of range")


def test_list_options_accumulate_through_subclasses(make_options):
    class MoreOptions(MasterOptions):
        list_options = ["tag"]
        optParameters = [["tag", None, None, "Tag."]]

    options = parse(make_options(MoreOptions),
                    "--tag", "a", "--build-abi", "x", "--tag", "b")
    assert options["tag"] == ["a", "b"]
    assert options["build-abi"] == ["x"]


def test_list_option_must_be_a_parameter():
    class Broken(ToolOptions):
        list_options = ["quiet"]

    with pytest.raises(ValueError):
        Broken()


def test_list_option_defaults_are_not_shared_between_instances():
    class Tags(ToolOptions):
        list_options = ["tag"]
        optParameters = [["tag", None, ["a"], "Tag."]]

    first, second = Tags(), Tags()
    first["tag"].append("b")
    assert second["tag"] == ["a"]
    assert Tags.optParameters[0][2] == ["a"]


def test_split_list():
    assert split_list(" a, b\n c,,d ") == ["a", "b", "c", "d"]
    assert split_list("") == []


def test_quiet_and_verbose_conflict(make_options):
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-q", "-v")
    assert str(e.value) == (
        "-q/--quiet and -v/--verbose cannot be used together.")


def test_quiet_and_verbose_conflict_in_one_section(make_options, write):
    path = write("[master]\nquiet = yes\nverbose = yes\n")
    with pytest.raises(usage.UsageError) as e:
        parse(make_options(), "-c", path)
    assert str(e.value) == (
        f"{path}, section [master]: quiet and verbose cannot both be set.")


def test_log_level_from_file(make_options, write):
    path = write("[master]\nverbose = yes\nlog_file = ~/piw.log\n")
    options = parse(make_options(), "-c", path)
    assert options["verbose"] == 1 and options["quiet"] == 0
    assert not options["log-file"].startswith("~")
    assert options["log-file"].endswith("piw.log")


def test_command_line_level_overrides_file_level(make_options, write):
    path = write("[master]\nverbose = yes\n")
    options = parse(make_options(), "-c", path, "-q")
    assert options["quiet"] == 1 and options["verbose"] == 0


def test_later_file_level_overrides_earlier(make_options, write):
    first = write("[master]\nverbose = yes\n", name="a.conf")
    second = write("[master]\nquiet = on\n", name="b.conf")
    options = parse(make_options(default_files=[first, second]))
    assert options["quiet"] == 1 and options["verbose"] == 0


def test_section_level_overrides_default_section(make_options, write):
    path = write("[DEFAULT]\nverbose = yes\n[master]\nquiet = yes\n")
    options = parse(make_options(), "-c", path)
    assert options["quiet"] == 1 and options["verbose"] == 0


def test_unknown_command_line_option(make_options):
    with pytest.raises(usage.UsageError):
        parse(make_options(), "--no-such-thing")


def test_version(make_options, capsys):
    import piwtwist
    with pytest.raises(SystemExit):
        parse(make_options(), "--version")
    assert capsys.readouterr().out == f"piwtwist {piwtwist.__version__}\n"


class InitOptions(ToolOptions):
    config_section = "initdb"
    default_config_files = ()
    optParameters = [["dsn", "d", "postgresql:///piwheels", "Database."]]


def test_run_tool_success():
    seen = []
    stderr = io.StringIO()
    code = run_tool(InitOptions, ["/usr/bin/piw-initdb", "-d", "x"],
                    lambda options: seen.append(options["dsn"]), stderr)
    assert code == EXIT_SUCCESS
    assert seen == ["x"]
    assert stderr.getvalue() == ""


def test_run_tool_returns_main_exit_code():
    assert run_tool(InitOptions, ["piw-initdb"], lambda options: 1,
                    io.StringIO()) == 1


def test_run_tool_usage_error():
    stderr = io.StringIO()
    called = []
    code = run_tool(InitOptions, ["/usr/bin/piw-initdb", "-q", "-v"],
                    called.append, stderr)
    assert code == EXIT_USAGE
    assert called == []
    assert stderr.getvalue() == (
        "piw-initdb: -q/--quiet and -v/--verbose cannot be used together.\n"
        "Try 'piw-initdb --help' for more information.\n")


def test_run_tool_usage_error_from_main():
    def main(options):
        raise usage.UsageError("the database is not a piwheels database.")

    stderr = io.StringIO()
    assert run_tool(InitOptions, ["piw-initdb"], main, stderr) == EXIT_USAGE
    assert stderr.getvalue().startswith(
        "piw-initdb: the database is not a piwheels database.\n")
