"""The rules for names, versions and file names, against hostile input."""

import pytest
from packaging.tags import Tag

from piwtwist import names
from piwtwist.names import InvalidName

CYRILLIC_A = "\u0430"   # looks like a Latin "a"
LONG = "a" * 10_000


# -- project names -----------------------------------------------------------

@pytest.mark.parametrize("name", [
    "six", "MarkupSafe", "zope.interface", "foo_bar", "foo-bar", "a", "A1",
    "x" * names.MAX_NAME_LENGTH, "backports.zoneinfo", "Flask-SQLAlchemy",
])
def test_good_project_names(name):
    assert names.check_project_name(name) == name
    assert names.is_project_name(name)


@pytest.mark.parametrize("name, why", [
    ("", "empty"),
    (None, "not a string"),
    (b"six", "not a string"),
    ("-r", "not a valid project name"),
    ("--index-url=http://evil/", "not a valid project name"),
    ("../etc", "not a valid project name"),
    ("foo/bar", "not a valid project name"),
    ("foo\\bar", "not a valid project name"),
    ("foo\0", "not a valid project name"),
    ("foo\n", "not a valid project name"),
    (" foo", "not a valid project name"),
    ("foo bar", "not a valid project name"),
    ("foo.", "not a valid project name"),
    ("_foo", "not a valid project name"),
    ("six==1.0", "not a valid project name"),
    ("foo;rm", "not a valid project name"),
    (f"r{CYRILLIC_A}nge", "not a valid project name"),
    ("caf\u00e9", "not a valid project name"),
    ("\uff53ix", "not a valid project name"),   # fullwidth s
    ("\u0664", "not a valid project name"),     # Arabic-Indic digit four
    (LONG, "longer than 200"),
])
def test_hostile_project_names(name, why):
    with pytest.raises(InvalidName, match=why):
        names.check_project_name(name)
    assert not names.is_project_name(name)


def test_a_refusal_is_a_value_error_with_a_short_message():
    with pytest.raises(ValueError) as caught:
        names.check_project_name(LONG + "!")
    assert len(str(caught.value)) < 200


def test_canonical_names():
    assert names.canonical("Foo_Bar.baz") == "foo-bar-baz"
    assert names.canonical("MarkupSafe") == "markupsafe"
    with pytest.raises(InvalidName):
        names.canonical(f"{CYRILLIC_A}bc")
    assert names.is_canonical("foo-bar")
    for name in ("Foo", "foo_bar", "foo.bar", "", "-foo", "foo-", "../x",
                 None, f"{CYRILLIC_A}bc", "x" * 201):
        assert not names.is_canonical(name), name


def test_project_name_prefix():
    assert names.project_name_prefix("  foo-bar (>=1.0)") == "foo-bar"
    assert names.project_name_prefix("foo_bar; extra == 'x'") == "foo_bar"
    assert names.project_name_prefix("-foo") is None
    assert names.project_name_prefix("") is None


# -- versions ----------------------------------------------------------------

@pytest.mark.parametrize("version", [
    "1.0", "1.0.0", "2!1.0", "1.0rc1", "1.0.post2", "1.0.dev3", "1.0+local.7",
    "v1.0", "2024.1", "0", "1.0-beta",
])
def test_good_versions(version):
    assert names.check_version(version) == version
    assert names.pip_requirement("foo", version) == f"foo=={version}"


@pytest.mark.parametrize("version", ["0.1dev-r1234", "2004d_1", "1.0-SNAPSHOT"])
def test_legacy_versions_are_recorded_but_not_built(version):
    assert names.check_version(version) == version
    assert not names.is_pep440(version)
    with pytest.raises(InvalidName, match="not a PEP 440 version"):
        names.pip_requirement("foo", version)


@pytest.mark.parametrize("version, why", [
    ("", "empty"),
    (None, "not a string"),
    (1.0, "not a string"),
    ("1.0 ", "characters outside"),
    (" 1.0", "characters outside"),
    ("1 .0", "characters outside"),
    ("1.0\t", "characters outside"),
    ("1.0\n", "characters outside"),
    ("1.0,<2", "characters outside"),
    ("1.0\0", "characters outside"),
    ("1.0; rm -rf /", "characters outside"),
    ("1.0' or '1", "characters outside"),
    ("1.0/../..", "characters outside"),
    (f"1.0{CYRILLIC_A}", "characters outside"),
    ("\u0661.0", "characters outside"),   # Arabic-Indic digit one
    ("-1.0", "start with a letter or a digit"),
    ("--no-deps", "start with a letter or a digit"),
    (".1", "start with a letter or a digit"),
    ("1" * 10_000, "longer than 200"),
])
def test_hostile_versions(version, why):
    with pytest.raises(InvalidName, match=why):
        names.check_version(version)
    with pytest.raises(InvalidName):
        names.pip_requirement("foo", version)


def test_pip_requirement_checks_the_name_too():
    with pytest.raises(InvalidName, match="not a valid project name"):
        names.pip_requirement("--index-url=http://evil/", "1.0")
    with pytest.raises(InvalidName, match="not a valid project name"):
        names.pip_requirement(f"s{CYRILLIC_A}fe", "1.0")


# -- wheel file names --------------------------------------------------------

def test_good_wheel_filenames():
    name, version, build, tags = names.check_wheel_filename(
        "foo_bar-1.0-py3-none-any.whl")
    assert (name, str(version), build) == ("foo-bar", "1.0", ())
    assert tags == {Tag("py3", "none", "any")}
    name, version, build, tags = names.check_wheel_filename(
        "MarkupSafe-3.0.2-1-cp311-cp311-linux_armv7l.whl")
    assert (name, str(version), build) == ("markupsafe", "3.0.2", (1, ""))
    assert tags == {Tag("cp311", "cp311", "linux_armv7l")}
    longest = "a-1.0-py3-none-" + "x" * (names.MAX_FILENAME_LENGTH - 19) + \
        ".whl"
    assert len(longest) == names.MAX_FILENAME_LENGTH
    names.check_wheel_filename(longest)


@pytest.mark.parametrize("filename, why", [
    ("", "empty"),
    (None, "not a string"),
    ("../foo-1.0-py3-none-any.whl", "'/'"),
    ("a/foo-1.0-py3-none-any.whl", "'/'"),
    ("a\\foo-1.0-py3-none-any.whl", "'\\\\\\\\'"),
    ("foo-1.0-py3-none-any.whl\0", "'\\\\x00'"),
    ("..foo-1.0-py3-none-any.whl", "'..'"),
    ("foo-1..0-py3-none-any.whl", "'..'"),
    (".foo-1.0-py3-none-any.whl", "starts with '.'"),
    ("foo-1.0-py3-none-any.whl ", "characters outside"),
    ("foo-1.0-py3-none-any.whl\n", "characters outside"),
    ("foo bar-1.0-py3-none-any.whl", "characters outside"),
    (f"{CYRILLIC_A}-1.0-py3-none-any.whl", "characters outside"),
    ("foo-1.0-py3-none-any.whl" + "x" * 10_000, "longer than 244"),
    ("foo-1.0.tar.gz", "not a wheel"),
    ("foo.whl", "not a wheel"),
    ("-1.0-py3-none-any.whl", "not a wheel"),
    ("foo-1.0,2-py3-none-any.whl", "characters outside"),
    ("foo-not!a!version-py3-none-any.whl", "not a wheel"),
    ("_foo-1.0-py3-none-any.whl", "no valid project name"),
])
def test_hostile_wheel_filenames(filename, why):
    with pytest.raises(InvalidName, match=why):
        names.check_wheel_filename(filename)


# -- path components ---------------------------------------------------------

@pytest.mark.parametrize("name", [
    "foo-bar", "Foo.Bar", "foo_bar-1.0-py3-none-any.whl", "1.0+local",
    "x" * 255,
])
def test_safe_path_components(name):
    assert names.is_safe_path_component(name)


@pytest.mark.parametrize("name", [
    "", ".", "..", ".hidden", "-rf", "a/b", "a\\b", "a\0", "foo\n", "a b",
    f"{CYRILLIC_A}", "x" * 256, None, 42,
])
def test_unsafe_path_components(name):
    assert not names.is_safe_path_component(name)


# -- as PyPI spells them -----------------------------------------------------

def test_recorded_text_is_tolerant_but_bounded():
    # PyPI's history has spellings no current tool takes; they are recorded
    assert names.check_recorded("Zope 3", "project name", 200) == "Zope 3"
    assert names.check_recorded("1.0 beta", "version", 200) == "1.0 beta"
    for value, why in [("", "is not a name"), ("  ", "is not a name"),
                       (None, "is not a name"), ("x" * 201, "longer than 200"),
                       ("a\0b", "control characters"),
                       ("a\nb", "control characters"),
                       ("a\tb", "control characters")]:
        with pytest.raises(InvalidName, match=why):
            names.check_recorded(value, "project name", 200)


def test_pypi_filenames_are_plain_names():
    assert names.check_pypi_filename(" foo-1.0.tar.gz ") == "foo-1.0.tar.gz"
    for bad in ("../../etc/passwd", "a\\b", ".", "..", "", "x" * 256,
                "a\0"):
        with pytest.raises(InvalidName):
            names.check_pypi_filename(bad)
