"""The wheel carries sql/ and templates/, and the installed package finds
them and its twistd plugins without the checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    (wheel,) = out.glob("piwtwist-*.whl")
    return wheel


def test_wheel_contains_sql_templates_and_plugins(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for script in (ROOT / "sql").glob("*.sql"):
        assert f"piwtwist/sql/{script.name}" in names
    for template in (ROOT / "templates").iterdir():
        if template.suffix in (".html", ".xml", ".txt", ".css", ".js",
                               ".svg"):
            assert f"piwtwist/templates/{template.name}" in names
    for plugin in (ROOT / "twisted" / "plugins").glob("*.py"):
        assert f"twisted/plugins/{plugin.name}" in names
    assert not any(name.endswith("dropin.cache") for name in names)
    assert "twisted/plugins/__init__.py" not in names


def test_installed_package_finds_its_resources(built_wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q",
         "--target", str(target), str(built_wheel)],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    probe = ("import piwtwist.resources as r, piwtwist.db.schema as s; "
             "print(r.sql_dir()); print(len(s.create_script('x')))")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert result.returncode == 0, result.stdout
    sql_dir, length = result.stdout.split()
    assert Path(sql_dir) == target / "piwtwist" / "sql"
    assert int(length) > 10000
