"""Why a build failed: a fixed vocabulary of failure classes, worked out
from the build's log and the reason the builder gave.

Both ends use this module: a builder classifies its own failures (to decide
whether a known remedy is worth a second attempt) and the master classifies
the log it received again, because it believes nothing a builder says.  It
imports neither Twisted nor the database for that reason.

:func:`classify` applies ordered rules: the sandbox's own verdicts first
(timeout, memory, disk, a build that never started), then what the log
says, most specific first, so that a missing ``Python.h`` is a
``missing-header`` and not the ``compiler-error`` gcc reports after it.
Each class carries a one-line explanation (:data:`CLASSES`) and, where one
is known, a hint: the Debian package that provides a missing header or
library, the toolchain to install, the constraint that rescues an old
``setup.py``.
"""

import re
from dataclasses import dataclass

#: Every failure class, with what it means, in the order they are listed
#: to people.
CLASSES = {
    "missing-header": "a C/C++ header the build includes is not installed",
    "missing-library": "a system library (or its pkg-config file or "
                       "*-config tool) the build links against is not "
                       "installed",
    "missing-compiler": "the build needs a compiler or toolchain (C, C++, "
                        "Fortran, Rust, Go, CMake) that is not installed",
    "build-dependency": "a build requirement could not be installed or "
                        "is not declared",
    "python-version": "the release does not support this Python version "
                      "(Requires-Python, or its setup code refuses it)",
    "python2-only": "the release's build code is Python 2 only",
    "pkg-resources": "setup.py imports pkg_resources, which setuptools 82 "
                     "removed",
    "compiler-error": "the compiler rejected the code",
    "no-source": "there is no source distribution to build",
    "timeout": "the build ran longer than the builder's timeout",
    "memory": "the build ran out of memory",
    "disk": "the build wrote more than its disk or log allowance",
    "network": "the build could not reach the network or the index",
    "sandbox": "the build tried what the sandbox forbids, or the sandbox "
               "could not be set up",
    "unknown": "no rule recognised this failure; read the log",
}

#: Classes caused by the builder's environment rather than the release:
#: worth building again once the operator has changed something.
ENVIRONMENTAL = ("missing-header", "missing-library", "missing-compiler",
                 "network", "timeout", "memory", "disk")


@dataclass(frozen=True)
class Diagnosis:
    """A failure's class and, where known, what would fix it."""

    failure_class: str
    hint: str = ""

    @property
    def explanation(self):
        return CLASSES[self.failure_class]


#: Debian packages that provide common headers (as ``#include`` names
#: them), for builders where the header is not installed.
HEADER_PACKAGES = {
    "Python.h": "python3-dev",
    "pyconfig.h": "python3-dev",
    "ffi.h": "libffi-dev",
    "libxml/xmlversion.h": "libxml2-dev",
    "libxml/parser.h": "libxml2-dev",
    "libxslt/xsltconfig.h": "libxslt1-dev",
    "libxslt/xslt.h": "libxslt1-dev",
    "zlib.h": "zlib1g-dev",
    "openssl/ssl.h": "libssl-dev",
    "openssl/opensslv.h": "libssl-dev",
    "openssl/evp.h": "libssl-dev",
    "openssl/aes.h": "libssl-dev",
    "bzlib.h": "libbz2-dev",
    "lzma.h": "liblzma-dev",
    "sqlite3.h": "libsqlite3-dev",
    "jpeglib.h": "libjpeg-dev",
    "png.h": "libpng-dev",
    "tiffio.h": "libtiff-dev",
    "ft2build.h": "libfreetype-dev",
    "yaml.h": "libyaml-dev",
    "pg_config.h": "libpq-dev",
    "libpq-fe.h": "libpq-dev",
    "mysql.h": "default-libmysqlclient-dev",
    "mysql/mysql.h": "default-libmysqlclient-dev",
    "sasl/sasl.h": "libsasl2-dev",
    "lber.h": "libldap-dev",
    "ldap.h": "libldap-dev",
    "krb5.h": "libkrb5-dev",
    "gssapi/gssapi.h": "libkrb5-dev",
    "curl/curl.h": "libcurl4-openssl-dev",
    "ncurses.h": "libncurses-dev",
    "curses.h": "libncurses-dev",
    "readline/readline.h": "libreadline-dev",
    "gmp.h": "libgmp-dev",
    "mpfr.h": "libmpfr-dev",
    "mpc.h": "libmpc-dev",
    "hdf5.h": "libhdf5-dev",
    "cblas.h": "libopenblas-dev",
    "lapacke.h": "liblapacke-dev",
    "fftw3.h": "libfftw3-dev",
    "snappy-c.h": "libsnappy-dev",
    "lz4.h": "liblz4-dev",
    "zstd.h": "libzstd-dev",
    "libusb.h": "libusb-1.0-0-dev",
    "libusb-1.0/libusb.h": "libusb-1.0-0-dev",
    "alsa/asoundlib.h": "libasound2-dev",
    "portaudio.h": "portaudio19-dev",
    "systemd/sd-daemon.h": "libsystemd-dev",
    "systemd/sd-journal.h": "libsystemd-dev",
    "dbus/dbus.h": "libdbus-1-dev",
    "cairo.h": "libcairo2-dev",
    "glib.h": "libglib2.0-dev",
    "X11/Xlib.h": "libx11-dev",
    "GL/gl.h": "libgl-dev",
    "SDL.h": "libsdl2-dev",
    "SDL2/SDL.h": "libsdl2-dev",
    "magic.h": "libmagic-dev",
    "uuid/uuid.h": "uuid-dev",
    "security/pam_appl.h": "libpam0g-dev",
    "gpiod.h": "libgpiod-dev",
    "i2c/smbus.h": "libi2c-dev",
    "linux/i2c-dev.h": "linux-libc-dev",
    "bluetooth/bluetooth.h": "libbluetooth-dev",
    "libudev.h": "libudev-dev",
    "pcap.h": "libpcap-dev",
    "ev.h": "libev-dev",
    "event.h": "libevent-dev",
    "gdal.h": "libgdal-dev",
    "geos_c.h": "libgeos-dev",
    "proj.h": "libproj-dev",
    "Magick++.h": "libmagick++-dev",
    "boost/python.hpp": "libboost-python-dev",
    "boost/version.hpp": "libboost-dev",
    "Eigen/Core": "libeigen3-dev",
    "libavcodec/avcodec.h": "libavcodec-dev",
    "libavformat/avformat.h": "libavformat-dev",
    "mpi.h": "libopenmpi-dev",
}

#: Debian packages for libraries named the way a linker (``-lNAME``),
#: pkg-config or a ``*-config`` tool names them.
LIBRARY_PACKAGES = {
    "ffi": "libffi-dev", "libffi": "libffi-dev",
    "xml2": "libxml2-dev", "libxml-2.0": "libxml2-dev",
    "xml2-config": "libxml2-dev",
    "xslt": "libxslt1-dev", "exslt": "libxslt1-dev",
    "libxslt": "libxslt1-dev", "xslt-config": "libxslt1-dev",
    "z": "zlib1g-dev", "zlib": "zlib1g-dev",
    "ssl": "libssl-dev", "crypto": "libssl-dev", "openssl": "libssl-dev",
    "libssl": "libssl-dev", "libcrypto": "libssl-dev",
    "bz2": "libbz2-dev", "lzma": "liblzma-dev", "liblzma": "liblzma-dev",
    "sqlite3": "libsqlite3-dev",
    "jpeg": "libjpeg-dev", "libjpeg": "libjpeg-dev",
    "png": "libpng-dev", "libpng": "libpng-dev", "tiff": "libtiff-dev",
    "freetype": "libfreetype-dev", "freetype2": "libfreetype-dev",
    "yaml": "libyaml-dev", "yaml-0.1": "libyaml-dev",
    "pq": "libpq-dev", "libpq": "libpq-dev", "pg_config": "libpq-dev",
    "mysqlclient": "default-libmysqlclient-dev",
    "mysql_config": "default-libmysqlclient-dev",
    "mariadb_config": "libmariadb-dev",
    "sasl2": "libsasl2-dev", "ldap": "libldap-dev", "lber": "libldap-dev",
    "krb5": "libkrb5-dev", "krb5-config": "libkrb5-dev",
    "gssapi_krb5": "libkrb5-dev",
    "curl": "libcurl4-openssl-dev", "libcurl": "libcurl4-openssl-dev",
    "curl-config": "libcurl4-openssl-dev",
    "ncurses": "libncurses-dev", "ncursesw": "libncurses-dev",
    "readline": "libreadline-dev", "gmp": "libgmp-dev",
    "hdf5": "libhdf5-dev", "openblas": "libopenblas-dev",
    "blas": "libopenblas-dev", "lapack": "liblapack-dev",
    "fftw3": "libfftw3-dev", "snappy": "libsnappy-dev",
    "lz4": "liblz4-dev", "zstd": "libzstd-dev", "libzstd": "libzstd-dev",
    "usb-1.0": "libusb-1.0-0-dev", "libusb-1.0": "libusb-1.0-0-dev",
    "asound": "libasound2-dev", "alsa": "libasound2-dev",
    "portaudio": "portaudio19-dev", "portaudio-2.0": "portaudio19-dev",
    "systemd": "libsystemd-dev", "libsystemd": "libsystemd-dev",
    "dbus-1": "libdbus-1-dev", "cairo": "libcairo2-dev",
    "glib-2.0": "libglib2.0-dev", "gobject-introspection-1.0":
    "libgirepository1.0-dev", "X11": "libx11-dev", "x11": "libx11-dev",
    "GL": "libgl-dev", "sdl2": "libsdl2-dev", "SDL2": "libsdl2-dev",
    "magic": "libmagic-dev", "uuid": "uuid-dev", "pam": "libpam0g-dev",
    "gpiod": "libgpiod-dev", "libgpiod": "libgpiod-dev",
    "i2c": "libi2c-dev", "bluetooth": "libbluetooth-dev",
    "udev": "libudev-dev", "libudev": "libudev-dev", "pcap": "libpcap-dev",
    "ev": "libev-dev", "event": "libevent-dev", "gdal": "libgdal-dev",
    "gdal-config": "libgdal-dev", "geos_c": "libgeos-dev",
    "geos-config": "libgeos-dev", "proj": "libproj-dev",
    "MagickWand": "libmagickwand-dev", "boost_python3": "libboost-python-dev",
    "hidapi-libusb": "libhidapi-dev", "hidapi-hidraw": "libhidapi-dev",
    "mpi": "libopenmpi-dev", "mpicc": "libopenmpi-dev",
    "python3": "python3-dev", "python3-embed": "python3-dev",
}

#: What to install for a missing tool.
TOOL_PACKAGES = {
    "gcc": "build-essential", "cc": "build-essential",
    "g++": "build-essential", "c++": "build-essential",
    "x86_64-linux-gnu-gcc": "build-essential",
    "aarch64-linux-gnu-gcc": "build-essential",
    "arm-linux-gnueabihf-gcc": "build-essential",
    "gfortran": "gfortran", "fortran": "gfortran",
    "rust": "rustc cargo", "rustc": "rustc cargo", "cargo": "rustc cargo",
    "go": "golang-go", "cmake": "cmake", "ninja": "ninja-build",
    "swig": "swig", "make": "make", "pkg-config": "pkg-config",
    "protoc": "protobuf-compiler", "nasm": "nasm", "yasm": "yasm",
    "autoconf": "autoconf", "libtool": "libtool",
}

#: The GCC diagnostics that GCC 14 made errors (they were warnings), each
#: relaxed by its flag: what rescues old C code.
GCC14_ERRORS = ("incompatible-pointer-types", "implicit-function-declaration",
                "int-conversion", "return-mismatch", "implicit-int",
                "declaration-missing-parameter-type")

#: The build constraint that rescues a setup.py importing pkg_resources.
SETUPTOOLS_CONSTRAINT = "setuptools<82"
#: The build constraint that rescues a setup.py written for Cython 0.29.
CYTHON_CONSTRAINT = "Cython<3"


def _rx(pattern, flags=0):
    return re.compile(pattern, flags | re.MULTILINE)


# -- the sandbox's verdicts (the reason line) ---------------------------

def _from_reason(reason):
    reason = reason or ""
    if reason.startswith("timed out after"):
        return Diagnosis("timeout", f"the build {reason}; a builder with a "
                                    f"longer timeout may finish it")
    if reason.startswith("out of memory"):
        return Diagnosis("memory", "needs a builder with more memory "
                                   "(or swap)")
    if reason.startswith("wrote more than") or "disk is full" in reason:
        return Diagnosis("disk", f"the build {reason}")
    if reason.startswith("printed more than"):
        return Diagnosis("disk", f"the build {reason}")
    if reason.startswith("could not start the build"):
        if re.search(r"bubblewrap|bwrap|prlimit|setsid|sandbox", reason):
            return Diagnosis("sandbox", reason)
        return Diagnosis("unknown", reason)
    if reason == "killed by signal 9":
        # nothing of ours sent it: the kernel's OOM killer does
        return Diagnosis("memory", "killed by SIGKILL, most likely by the "
                                   "kernel's out-of-memory killer")
    return None


# -- what the log says ----------------------------------------------------

_HEADER = _rx(
    r"(?:fatal error|error): ['\"‘]?([\w./+-]+\.(?:h|hpp|hh|H)|Eigen/\w+)"
    r"['\"’]?(?::)? (?:No such file or directory|file not found)")
_LD_LIBRARY = _rx(r"(?:/usr/bin/)?ld(?:\.\w+)?: (?:error: )?"
                  r"(?:cannot find|unable to find library) -l([\w.+-]+)")
_PKG_CONFIG = _rx(
    r"(?:Package ['\"]?([\w.+-]+)['\"]?,? (?:required by [^,]+, )?"
    r"(?:was )?not found|"
    r"No package ['\"]([\w.+-]+)['\"] found|"
    r"Could not find (?:the )?(?:required )?(?:package|library) "
    r"['\"]?([\w.+-]+)['\"]? ?(?:with pkg-config|using pkg-config)|"
    r"Could NOT find (\w+)|"
    # mysqlclient's setup.py, when pkg-config knows neither mysqlclient
    # nor mariadb
    r"Can not find valid pkg-config name\.\s+Specify (MYSQLCLIENT)_CFLAGS)")
_CONFIG_TOOL = _rx(
    r"(?:Error: |error: |OSError: |EnvironmentError: |Could not run |^)"
    r"((?:pg|mysql|mariadb|xml2|xslt|curl|krb5|gdal|geos|mpicc|"
    r"net-snmp)[_-]config)(?: executable)?:? (?:not found|command not "
    r"found|(?:\[Errno 2\] )?No such file)", re.IGNORECASE)
_COMPILER = [
    (_rx(r"(?:unable to execute|error: command) '?(?:/usr/bin/)?"
         r"([\w+.-]*(?:gcc|g\+\+|cc|c\+\+|clang|gfortran))'?:? "
         r"(?:failed: )?No such file or directory"), None),
    (_rx(r"(?:/bin/sh: \d+: |sh: )?\b(gcc|cc|g\+\+|c\+\+|gfortran|cargo|"
         r"rustc|go|cmake|swig|ninja|protoc|make|pkg-config)"
         r"(?:: not found|: command not found)"), None),
    (_rx(r"can't find Rust compiler|Rust not found, installing into a "
         r"temporary directory|error: could not find `cargo`|"
         r"Cargo, the Rust package manager, is not installed"), "rust"),
    (_rx(r"No CMAKE_(?:C|CXX)_COMPILER could be found|"
         r"CMAKE_(?:C|CXX)_COMPILER not set|"
         r"error: Microsoft Visual C\+\+|"
         r"You need a C compiler to build|No working C compiler"), "gcc"),
    (_rx(r"No CMAKE_Fortran_COMPILER could be found|"
         r"(?:could not|couldn't|Unable to) find (?:a )?Fortran compiler|"
         r"need_fortran|Could not locate executable gfortran",
         re.IGNORECASE), "gfortran"),
    (_rx(r"(?:cmake|CMake)(?: executable)? (?:was )?not found|"
         r"Could not find CMake|CMake must be installed|"
         r"No such file or directory: '?cmake'?"), "cmake"),
    (_rx(r"exec: \"go\": executable file not found|"
         r"No such file or directory: '?go'?$|Go compiler not found"), "go"),
]
_PKG_RESOURCES = _rx(r"(?:ModuleNotFoundError|ImportError): No module "
                     r"named '?pkg_resources'?")
_PYTHON2 = [
    _rx(r"SyntaxError: Missing parentheses in call to '(?:print|exec)'"),
    _rx(r"^\s+print [\"'][^\n]*\n\s*\^+\nSyntaxError"),
    _rx(r"^\s+except [\w.]+, \w+:\s*\n\s*\^+\nSyntaxError"),
    _rx(r"^\s+raise [\w.]+, [^\n]*\n\s*\^+\nSyntaxError"),
    _rx(r"NameError: name '(?:unicode|execfile|raw_input|basestring|long|"
        r"xrange|unichr|file|reload)' is not defined"),
    _rx(r"(?:ModuleNotFoundError|ImportError): No module named "
        r"'?(?:urllib2|ConfigParser|StringIO|cStringIO|commands|"
        r"HTMLParser|httplib|urlparse|cPickle|__builtin__|Queue|"
        r"compiler|sets|md5|sha)'?$"),
    _rx(r"SyntaxError: invalid (?:token|decimal literal)\n?.*\b0[0-7]+\b"),
    _rx(r"SyntaxError: Missing parentheses"),
    _rx(r"(?:only|requires) (?:supports? |works with )?Python 2",
        re.IGNORECASE),
    _rx(r"AttributeError: '?(?:dict|module)'? object has no attribute "
        r"'(?:iteritems|itervalues|iterkeys|has_key)'"),
    # setuptools 58 dropped use_2to3, which converted Python 2 sources
    _rx(r"error in [^\n]* setup command: use_2to3 is invalid"),
]
_PYTHON_VERSION = [
    _rx(r"requires a different Python: [\d.]+ not in"),
    _rx(r"Ignored the following versions that require a different python"
        r" version", re.IGNORECASE),
    _rx(r"(?:Python|python) (?:[\d.]+ (?:or (?:later|newer|above)|\+) )?"
        r"(?:is )?required|(?:requires|needs) Python (?:>= ?|<)?[\d.]+|"
        r"Python [\d.]+(?: or (?:later|newer|above)| and above)? is "
        r"required|not supported on Python [\d.]+|unsupported Python "
        r"version|Python [\d.]+ is not supported|only supports Python "
        r"[\d.]+ (?:to|through)|does not support Python [\d.]+|"
        r"Python version [^\n]{0,40}required",
        re.IGNORECASE),
]
_NETWORK = _rx(
    r"Temporary failure in name resolution|Name or service not known|"
    r"Failed to establish a new connection|Network is unreachable|"
    r"Connection (?:refused|reset by peer|timed out)|"
    r"Max retries exceeded with url|ReadTimeoutError|ConnectTimeoutError|"
    r"Could not fetch URL|No route to host|"
    r"There was a problem confirming the ssl certificate|"
    r"SSLError\(|getaddrinfo failed|failed to (?:download|fetch)|"
    r"error sending request for url|spurious network error",
    re.IGNORECASE)
_SANDBOX = _rx(
    r"^bwrap: |Read-only file system|"
    r"PermissionError: \[Errno 1\] Operation not permitted|"
    r"Creating new namespace failed|"
    r"RLIMIT_NPROC|Resource temporarily unavailable.*fork|"
    r"fork: retry: Resource temporarily unavailable|"
    r"can't start new thread|BlockingIOError: \[Errno 11\]")
_MEMORY = _rx(
    r"^MemoryError|virtual memory exhausted|cc1(?:plus)?: out of memory|"
    r"std::bad_alloc|Cannot allocate memory|"
    r"Killed signal terminated program|"
    r"c\+\+: fatal error: Killed signal|memory allocation of \d+ bytes "
    r"failed|(?:out of|insufficient) memory")
_DISK = _rx(r"No space left on device|Disk quota exceeded|File too large")
_COMPILER_ERROR = _rx(
    r"^\s*[^\s:]+\.(?:c|cc|cpp|cxx|h|hpp|f|f90|pyx|pxd|m):\d+(?::\d+)?: "
    r"(?:fatal )?error: |"
    r"^\s*error(?:\[E\d+\])?: (?!subprocess-exited|metadata-generation|"
    r"legacy-install|failed-wheel|command|invalid command)|"
    r"error: could not compile `|"
    r"error: command '[^']*(?:gcc|g\+\+|cc|c\+\+|clang|gfortran)' failed|"
    r"Cython\.Compiler\.Errors\.CompileError|"
    r"^\s*Error compiling Cython file:|"
    r"collect2: error: ld returned|"
    r"error: linking with `cc` failed|"
    r"Error: .*(?:Fortran|f2py).*failed")
_GCC14 = _rx(r"error: [^\n]*\[-W(?:error=)?(" + "|".join(GCC14_ERRORS)
             + r")\]")
_BUILD_DEPENDENCY = _rx(
    r"pip subprocess to install build dependencies did not run "
    r"successfully|"
    r"Installing build dependencies[ .]*error|"
    r"(?:Could not find a version that satisfies|No matching distribution "
    r"found for) [^\n]*\n?[\s\S]{0,400}?installing build dependencies|"
    r"ResolutionImpossible|Cannot install [^\n]+ because these package "
    r"versions have conflicting dependencies|"
    r"(?:ModuleNotFoundError|ImportError): No module named "
    r"'?(?:numpy|Cython|cython|setuptools_scm|cffi|pybind11|torch|"
    r"wheel|setuptools|distutils|pbr|versioneer|six|skbuild|"
    r"setuptools_rust|poetry|hatchling|flit_core|mesonpy|"
    r"scikit_build_core|numpy\.distutils|Cython\.Build|"
    r"Cython\.Distutils)'?",
    re.IGNORECASE)
# setup.py written for Cython 0.29 (PyYAML 6.0 and others) under the
# Cython 3 that its unpinned build requirement brings
_CYTHON3 = _rx(r"object has no attribute 'cython_sources'")
_NO_SOURCE = _rx(
    r"Could not find a version that satisfies the requirement|"
    r"No matching distribution found for|"
    r"Did not find any sdists for|"
    r"(?:has|had) no source distribution")


def _header_hint(header):
    package = HEADER_PACKAGES.get(header) or HEADER_PACKAGES.get(
        header.rsplit("/", 1)[-1])
    if package:
        return f"install {package} (it provides {header})"
    return (f"install the -dev package that provides {header} "
            f"(apt-file search {header})")


def _library_hint(name):
    package = LIBRARY_PACKAGES.get(name) or LIBRARY_PACKAGES.get(
        name.lower())
    if package:
        return f"install {package} (it provides {name})"
    return f"install the -dev package that provides {name}"


def _tool_hint(tool):
    tool = tool.rsplit("/", 1)[-1]
    if tool not in TOOL_PACKAGES:
        for known in ("g++", "gcc", "gfortran", "clang"):
            if tool.endswith(known):
                tool = known if known != "clang" else "gcc"
                break
    package = TOOL_PACKAGES.get(tool)
    if package:
        return f"install {package} (for {tool})"
    return f"install {tool}"


_FOOTER = _rx(r"^# (.+?); duration [^\n]*\n?\Z")


def _footer_reason(log):
    """The reason on the sandbox's footer, the log's last line (for logs
    classified without their builder's reason)."""
    match = _FOOTER.search(log[-2000:])
    return match.group(1) if match else ""


def gcc14_errors(log):
    """The GCC-14 error kinds the log shows (``int-conversion`` ...), each
    once, in the order first seen."""
    return tuple(dict.fromkeys(m.group(1) for m in _GCC14.finditer(log)))


def relaxing_flags(kinds):
    """The CFLAGS that turn these GCC-14 errors back into warnings."""
    return tuple(f"-Wno-error={kind}" for kind in kinds)


#: How much of a long log the rules read: its head and its tail, where
#: pip and compilers say what went wrong (and a bound on the time taken).
HEAD_CHARS = 32 * 1024
TAIL_CHARS = 192 * 1024


def _window(log):
    if len(log) <= HEAD_CHARS + TAIL_CHARS:
        return log
    return log[:HEAD_CHARS] + "\n" + log[-TAIL_CHARS:]


def classify(log, reason=""):
    """The :class:`Diagnosis` of a failed build from its *log* and the
    *reason* its builder gave.  For a missing header or library, the hint
    is the builder's own finding (:func:`finding_line`) when it names what
    the log says is missing, cleaned and bounded (:func:`clean_hint`)."""
    log, appended = split_builder_lines(log or "")
    diagnosis = _classify(log, reason)
    finding = _last_finding(appended)
    if finding is not None and diagnosis.failure_class in MISSING_CLASSES:
        kind, name, text = finding
        if missing_file(log, diagnosis.failure_class) == (kind, name):
            hint = clean_hint(text)
            if hint:
                return Diagnosis(diagnosis.failure_class, hint)
    return diagnosis


def _rule_text(log):
    """What the rules read of a log: after a retry, only the retry, and of
    a long log its head and tail."""
    # a rescued build's log: what the retry says is what counts
    retried = log.rfind("\n" + retry_marker(""))
    if retried >= 0:
        log = log[retried:]
    return _window(log)


def _classify(log, reason=""):
    log = _rule_text(log)
    found = _from_reason(reason or _footer_reason(log))
    if found is not None:
        return found
    match = _SANDBOX.search(log)
    if match:
        return Diagnosis("sandbox", f"the build tried what the sandbox "
                                    f"forbids: {match.group(0).strip()}")
    match = _DISK.search(log)
    if match:
        return Diagnosis("disk", match.group(0))
    match = _MEMORY.search(log)
    if match:
        return Diagnosis("memory", "needs a builder with more memory "
                                   "(or swap)")
    if _PKG_RESOURCES.search(log):
        return Diagnosis("pkg-resources", f"build with the constraint "
                                          f"{SETUPTOOLS_CONSTRAINT}")
    match = _HEADER.search(log)
    if match:
        return Diagnosis("missing-header", _header_hint(match.group(1)))
    for pattern, tool in _COMPILER:
        match = pattern.search(log)
        if match:
            return Diagnosis("missing-compiler",
                             _tool_hint(tool or match.group(1)))
    match = _LD_LIBRARY.search(log) or _CONFIG_TOOL.search(log)
    if match:
        return Diagnosis("missing-library", _library_hint(match.group(1)))
    match = _PKG_CONFIG.search(log)
    if match:
        name = next(group for group in match.groups() if group)
        return Diagnosis("missing-library", _library_hint(name))
    kinds = gcc14_errors(log)
    if kinds:
        return Diagnosis("compiler-error",
                         "GCC 14 errors; build with CFLAGS="
                         + " ".join(relaxing_flags(kinds)))
    for pattern in _PYTHON2:
        if pattern.search(log):
            return Diagnosis("python2-only",
                             "only a Python 2 builder can build it")
    for pattern in _PYTHON_VERSION:
        if pattern.search(log):
            return Diagnosis("python-version",
                             "the release does not support this Python")
    if _NETWORK.search(log):
        return Diagnosis("network", "build again once the network or the "
                                    "index is back")
    if _CYTHON3.search(log):
        return Diagnosis("build-dependency", "written for Cython<3, which "
                                             "its build requirements do "
                                             "not pin")
    match = _BUILD_DEPENDENCY.search(log)
    if match:
        missing = re.search(r"No module named '?([\w.]+)", match.group(0))
        hint = (f"{missing.group(1).split('.')[0]} is needed to build but "
                f"not declared in pyproject.toml" if missing else "")
        return Diagnosis("build-dependency", hint)
    if _COMPILER_ERROR.search(log):
        return Diagnosis("compiler-error", "")
    if _NO_SOURCE.search(log):
        return Diagnosis("no-source", "the release has no sdist (or only "
                                      "wheels) on the index")
    return Diagnosis("unknown", "")


def hint_for(failure_class, log, reason=""):
    """The hint :func:`classify` gives, if the log still leads to
    *failure_class*; else none."""
    diagnosis = classify(log, reason)
    return diagnosis.hint if diagnosis.failure_class == failure_class else ""


@dataclass(frozen=True)
class Remedy:
    """A known, safe change that rescues a failed build: build constraints
    for pip's isolated build environment, or compiler flags."""

    #: how it is recorded: ``setuptools<82``, ``CFLAGS=-Wno-error=...``
    label: str
    constraints: tuple = ()
    cflags: tuple = ()


def remedy_for(diagnosis, log):
    """The :class:`Remedy` for a failure, or None when there is none."""
    if diagnosis.failure_class == "pkg-resources":
        return Remedy(label=SETUPTOOLS_CONSTRAINT,
                      constraints=(SETUPTOOLS_CONSTRAINT,))
    if diagnosis.failure_class == "build-dependency" and \
            _CYTHON3.search(log):
        return Remedy(label=CYTHON_CONSTRAINT,
                      constraints=(CYTHON_CONSTRAINT,))
    if diagnosis.failure_class == "compiler-error":
        kinds = gcc14_errors(log)
        if kinds:
            flags = relaxing_flags(kinds)
            return Remedy(label="CFLAGS=" + " ".join(flags), cflags=flags)
    return None


def known_remedy(label):
    """Whether *label* names a remedy a builder may apply: what the
    master accepts as a rescue."""
    if label in (SETUPTOOLS_CONSTRAINT, CYTHON_CONSTRAINT):
        return True
    if label.startswith(APT_REMEDY):
        return bool(DEBIAN_PACKAGE.match(label[len(APT_REMEDY):]))
    if label.startswith("CFLAGS="):
        flags = label[len("CFLAGS="):].split()
        return bool(flags) and all(
            flag in relaxing_flags(GCC14_ERRORS) for flag in flags)
    return False


def retry_marker(label):
    """The line a builder's log shows between a failed attempt and its
    retry with the remedy *label*."""
    return f"# piwtwist: retrying once with {label}"


# -- what a builder found out about a missing file (issue 16) -----------

#: The classes whose fix is a Debian package a builder can look up.
MISSING_CLASSES = ("missing-header", "missing-library")

#: How every line a builder appends to a finished build's log begins.
BUILDER_LINE = "# piwtwist: "
_FINDING = BUILDER_LINE + "lookup: "
#: A builder's finding is shown as a hint of at most this many characters.
HINT_LIMIT = 240
#: Debian's rule for package names (Policy 5.6.1), lower case only.
DEBIAN_PACKAGE = re.compile(r"\A[a-z0-9][a-z0-9+.-]{1,99}\Z")
#: A rescue by installing an allowed Debian package is labelled so.
APT_REMEDY = "apt:"


def split_builder_lines(log):
    """*log* without the lines its builder appended after the build's
    footer, and those lines (each starting with :data:`BUILDER_LINE`).

    The footer (``# exit status 1; duration ...``) ends what a build can
    print, so a trailing run of such lines is the builder's own; the same
    lines printed by the build come before the footer and are not split
    off."""
    end = len(log)
    cut = end
    lines = []
    while cut > 0:
        stop = cut - 1 if log[cut - 1] == "\n" else cut
        start = log.rfind("\n", 0, stop) + 1
        line = log[start:stop]
        if not line.startswith(BUILDER_LINE) or start == 0:
            # a log made only of such lines has no build output at all
            break
        lines.append(line)
        cut = start
    return log[:cut], lines[::-1]


def finding_line(kind, name, text):
    """The line a builder appends to a failed build's log to say what it
    found out about the missing *kind* (``header``, ``library``,
    ``pkg-config``, ``tool``) *name*."""
    return f"{_FINDING}{kind} {name}: {' '.join(text.split())}\n"


def _last_finding(lines):
    for line in reversed(lines):
        if line.startswith(_FINDING):
            kind, _, rest = line[len(_FINDING):].partition(" ")
            name, separator, text = rest.partition(": ")
            if separator and kind and name:
                return kind, name, text
    return None


def clean_hint(text, limit=HINT_LIMIT):
    """*text* as one line of printable characters, at most *limit* long:
    what a builder says is shown on pages, and a builder may lie."""
    text = "".join(c if c.isprintable() else " " for c in text or "")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "\u2026"
    return text


def missing_file(log, failure_class):
    """What a ``missing-header`` or ``missing-library`` log says is
    missing, as ``(kind, name)``: ``("header", "ffi.h")``, ``("library",
    "ffi")`` for ``-lffi``, ``("tool", "xml2-config")``, ``("pkg-config",
    "libxml-2.0")``; None for any other log.  The same rules, in the same
    order, as :func:`classify`."""
    log = _rule_text(split_builder_lines(log or "")[0])
    if failure_class == "missing-header":
        match = _HEADER.search(log)
        return ("header", match.group(1)) if match else None
    if failure_class == "missing-library":
        match = _LD_LIBRARY.search(log)
        if match:
            return "library", match.group(1)
        match = _CONFIG_TOOL.search(log)
        if match:
            return "tool", match.group(1)
        match = _PKG_CONFIG.search(log)
        if match:
            return "pkg-config", next(g for g in match.groups() if g)
    return None


def package_for(kind, name):
    """The Debian package the curated maps name for a missing file, or
    ``""``."""
    if kind == "header":
        return HEADER_PACKAGES.get(name) or HEADER_PACKAGES.get(
            name.rsplit("/", 1)[-1], "")
    return LIBRARY_PACKAGES.get(name) or LIBRARY_PACKAGES.get(
        name.lower(), "")


def apt_remedy(package):
    """The :class:`Remedy` of installing the Debian *package* (which the
    builder does itself before its retry)."""
    if not DEBIAN_PACKAGE.match(package or ""):
        raise ValueError(f"{package!r} is not a Debian package name")
    return Remedy(label=APT_REMEDY + package)
