"""The failure classes: every class from a realistic log excerpt (kept in
tests/data/failures/), the hints, and the remedies a builder may apply."""

from pathlib import Path

import pytest

from piwtwist import failures
from piwtwist.failures import CLASSES, Diagnosis, classify

DATA = Path(__file__).parent / "data" / "failures"

# file -> (class, a piece of its hint, the builder's reason if any)
EXPECTED = {
    "missing-header-python-h.log": ("missing-header", "python3-dev", ""),
    "missing-header-libxml.log": ("missing-header", "libxml2-dev", ""),
    "missing-header-clang-zlib.log": ("missing-header", "zlib1g-dev", ""),
    "missing-library-ld.log": ("missing-library", "-dev package", ""),
    "missing-library-pg-config.log": ("missing-library", "libpq-dev", ""),
    "missing-library-pkg-config.log": ("missing-library", "libcairo2-dev",
                                       ""),
    # real PyPI builds (bench/yield.py): pycurl 7.45.3, mysqlclient 2.2.4,
    # PyYAML 6.0 under Cython 3, anyjson 0.3.3's use_2to3
    "missing-library-curl-config.log": ("missing-library",
                                        "libcurl4-openssl-dev", ""),
    "missing-library-mysqlclient.log": ("missing-library",
                                        "default-libmysqlclient-dev", ""),
    "build-dependency-cython3.log": ("build-dependency", "Cython<3", ""),
    "python2-only-use-2to3.log": ("python2-only", "Python 2", ""),
    "missing-compiler-rust.log": ("missing-compiler", "rustc cargo", ""),
    "missing-compiler-gcc.log": ("missing-compiler", "build-essential", ""),
    "missing-compiler-fortran.log": ("missing-compiler", "gfortran", ""),
    "build-dependency-undeclared-numpy.log": ("build-dependency", "numpy",
                                              ""),
    "build-dependency-install.log": ("build-dependency", "", ""),
    "python-version-requires-python.log": ("python-version", "", ""),
    "python-version-setup-refuses.log": ("python-version", "", ""),
    "python2-only-print.log": ("python2-only", "Python 2", ""),
    "python2-only-urllib2.log": ("python2-only", "Python 2", ""),
    "pkg-resources.log": ("pkg-resources", "setuptools<82", ""),
    "compiler-error-gcc14.log": (
        "compiler-error", "-Wno-error=implicit-function-declaration "
        "-Wno-error=int-conversion -Wno-error=incompatible-pointer-types",
        ""),
    "compiler-error-rust.log": ("compiler-error", "", ""),
    "compiler-error-cython.log": ("compiler-error", "", ""),
    "no-source.log": ("no-source", "sdist", ""),
    "network.log": ("network", "", ""),
    "timeout.log": ("timeout", "timed out after 3h", "timed out after 3h"),
    "memory.log": ("memory", "more memory", ""),
    "memory-limit.log": ("memory", "more memory", "out of memory?"),
    "disk.log": ("disk", "8.0 GiB", "wrote more than 8.0 GiB to its build "
                                    "directory"),
    "disk-log-flood.log": ("disk", "256.0 MiB", ""),
    "sandbox.log": ("sandbox", "Read-only file system", ""),
    "sandbox-could-not-start.log": (
        "sandbox", "bubblewrap",
        "could not start the build: bubblewrap (bwrap) is not installed"),
    "unknown.log": ("unknown", "", ""),
}


def test_every_excerpt_is_checked():
    assert sorted(p.name for p in DATA.glob("*.log")) == sorted(EXPECTED)


def test_every_class_has_an_excerpt():
    assert {c for c, _, _ in EXPECTED.values()} == set(CLASSES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classify(name):
    failure_class, hint, reason = EXPECTED[name]
    log = (DATA / name).read_text()
    diagnosis = classify(log, reason)
    assert diagnosis.failure_class == failure_class
    assert hint in diagnosis.hint
    assert diagnosis.explanation == CLASSES[failure_class]


@pytest.mark.parametrize("name", ["timeout.log", "memory-limit.log",
                                  "disk.log"])
def test_the_footer_stands_for_a_missing_reason(name):
    failure_class, _, _ = EXPECTED[name]
    assert classify((DATA / name).read_text()).failure_class == \
        failure_class


def test_a_build_cannot_fake_the_footer_mid_log():
    log = "# timed out after 1s; duration 1s\nSomething else\n" \
          "# exit status 1; duration 2s\n"
    assert classify(log).failure_class == "unknown"


def test_empty_log():
    assert classify("", "") == Diagnosis("unknown", "")
    assert classify(None).failure_class == "unknown"


def test_unmapped_header_points_at_apt_file():
    log = "foo.c:1:10: fatal error: weird/thing.h: No such file or " \
          "directory\n"
    diagnosis = classify(log)
    assert diagnosis.failure_class == "missing-header"
    assert "apt-file search weird/thing.h" in diagnosis.hint


def test_curated_maps_cover_the_common_headers():
    for header, package in {"Python.h": "python3-dev", "ffi.h": "libffi-dev",
                            "libxml/xmlversion.h": "libxml2-dev",
                            "zlib.h": "zlib1g-dev",
                            "openssl/ssl.h": "libssl-dev"}.items():
        assert failures.HEADER_PACKAGES[header] == package
    assert len(failures.HEADER_PACKAGES) >= 25


def test_remedies():
    log = (DATA / "pkg-resources.log").read_text()
    remedy = failures.remedy_for(classify(log), log)
    assert remedy == failures.Remedy("setuptools<82", ("setuptools<82",))
    log = (DATA / "build-dependency-cython3.log").read_text()
    remedy = failures.remedy_for(classify(log), log)
    assert remedy == failures.Remedy("Cython<3", ("Cython<3",))
    assert failures.known_remedy("Cython<3")
    log = (DATA / "build-dependency-install.log").read_text()
    assert failures.remedy_for(classify(log), log) is None
    log = (DATA / "compiler-error-gcc14.log").read_text()
    remedy = failures.remedy_for(classify(log), log)
    assert remedy.cflags == (
        "-Wno-error=implicit-function-declaration",
        "-Wno-error=int-conversion", "-Wno-error=incompatible-pointer-types")
    assert failures.known_remedy(remedy.label)
    for name in ("compiler-error-rust.log", "missing-header-python-h.log",
                 "timeout.log"):
        log = (DATA / name).read_text()
        assert failures.remedy_for(classify(log, EXPECTED[name][2]),
                                   log) is None


def test_known_remedy_refuses_anything_else():
    assert failures.known_remedy("setuptools<82")
    assert not failures.known_remedy("setuptools<81")
    assert not failures.known_remedy("CFLAGS=-O0")
    assert not failures.known_remedy("CFLAGS=")
    assert not failures.known_remedy("")
