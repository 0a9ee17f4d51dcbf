"""The build queue's rules, through the master's database client."""

from datetime import datetime, timedelta, timezone

import pytest_twisted

from piwtwist.db.records import BuildFile, BuildResult

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def wheel(package, version, py, abi, platform):
    filename = f"{package}-{version}-{py}-{abi}-{platform}.whl"
    return BuildFile(filename=filename, filesize=1234, filehash="ab" * 32,
                     package_tag=package, package_version_tag=version,
                     py_version_tag=py, abi_tag=abi, platform_tag=platform)


def success(package, version, abi, *files, built_by=1):
    return BuildResult(package=package, version=version, abi_tag=abi,
                       built_by=built_by, duration=timedelta(seconds=5),
                       status=True, output="built", files=files)


def failure(package, version, abi, reason="pip wheel failed"):
    return BuildResult(package=package, version=version, abi_tag=abi,
                       built_by=1, duration=timedelta(seconds=5),
                       status=False, output="boom", reason=reason)


async def queue(db, limit=10, exclude=()):
    return [(e.abi_tag, e.package, e.version)
            for e in await db.get_build_queue(limit, exclude)]


async def release(db, package, version, released=T0, skip=""):
    await db.add_new_package(package)
    await db.add_new_package_version(package, version, released, skip)


@pytest_twisted.ensureDeferred
async def test_new_release_is_offered_to_the_lowest_abi_only(db):
    # numeric order: cp39 is lower than cp310 although "cp310" < "cp39"
    await db.set_build_abis(["cp311", "cp310", "cp39"])
    await release(db, "foo", "1.0")
    assert await queue(db) == [("cp39", "foo", "1.0")]


@pytest_twisted.ensureDeferred
async def test_none_wheel_covers_every_abi(db):
    await db.set_build_abis(["cp39", "cp311"])
    await release(db, "foo", "1.0")
    await db.log_build(success("foo", "1.0", "cp39",
                               wheel("foo", "1.0", "py3", "none", "any")))
    assert await queue(db) == []


@pytest_twisted.ensureDeferred
async def test_abi_specific_wheel_opens_every_other_abi(db):
    await db.set_build_abis(["cp39", "cp310", "cp311"])
    await release(db, "foo", "1.0")
    await db.log_build(success(
        "foo", "1.0", "cp39",
        wheel("foo", "1.0", "cp39", "cp39", "linux_armv7l")))
    assert await queue(db) == [("cp310", "foo", "1.0"),
                               ("cp311", "foo", "1.0")]
    await db.log_build(success(
        "foo", "1.0", "cp310",
        wheel("foo", "1.0", "cp310", "cp310", "linux_armv7l")))
    assert await queue(db) == [("cp311", "foo", "1.0")]


@pytest_twisted.ensureDeferred
async def test_failure_on_lowest_abi_moves_on_to_the_next_only(db):
    await db.set_build_abis(["cp39", "cp310", "cp311"])
    await release(db, "foo", "1.0")
    await db.log_build(failure("foo", "1.0", "cp39"))
    assert await queue(db) == [("cp310", "foo", "1.0")]
    await db.log_build(failure("foo", "1.0", "cp310"))
    assert await queue(db) == [("cp311", "foo", "1.0")]
    await db.log_build(failure("foo", "1.0", "cp311"))
    assert await queue(db) == []


@pytest_twisted.ensureDeferred
async def test_abi3_wheel_covers_compatible_abis_only(db):
    await db.set_build_abis(["cp39", "cp310", "cp311"])
    await release(db, "foo", "1.0")
    await db.log_build(failure("foo", "1.0", "cp39"))
    # built on cp310, usable on cp310 and later: cp311 needs nothing
    await db.log_build(success(
        "foo", "1.0", "cp310",
        wheel("foo", "1.0", "cp310", "abi3", "linux_armv7l")))
    assert await queue(db) == []


@pytest_twisted.ensureDeferred
async def test_abi3_wheel_for_newer_python_leaves_older_abis_pending(db):
    await db.set_build_abis(["cp39", "cp311"])
    await release(db, "foo", "1.0")
    # a cp39 builder that produced a wheel for cp310+ only (odd, but seen)
    await db.log_build(success(
        "foo", "1.0", "cp39",
        wheel("foo", "1.0", "cp310", "abi3", "linux_armv7l")))
    assert await queue(db) == []  # cp39 was tried; cp311 covered by abi3
    await db.set_build_abis(["cp39", "cp311", "cp313"])
    assert await queue(db) == []


@pytest_twisted.ensureDeferred
async def test_skipped_packages_versions_and_abis_are_left_out(db):
    await db.set_build_abis(["cp39", "cp311"])
    await release(db, "foo", "1.0")
    await release(db, "bar", "2.0")
    await release(db, "baz", "3.0", skip="binary only")
    assert sorted(await queue(db)) == [("cp39", "bar", "2.0"),
                                       ("cp39", "foo", "1.0")]
    await db.skip_package("foo", "broken upstream")
    assert await queue(db) == [("cp39", "bar", "2.0")]
    await db.skip_package("foo", "")
    await db.skip_package_version("bar", "2.0", "too big")
    assert await queue(db) == [("cp39", "foo", "1.0")]
    await db.skip_package_version("baz", "3.0", "")
    assert sorted(await queue(db)) == [("cp39", "baz", "3.0"),
                                       ("cp39", "foo", "1.0")]
    await db.skip_build_abi("cp39", "builders retired")
    assert sorted(await queue(db)) == [("cp311", "baz", "3.0"),
                                       ("cp311", "foo", "1.0")]


@pytest_twisted.ensureDeferred
async def test_newest_release_first_and_limit_per_abi(db):
    await db.set_build_abis(["cp39", "cp311"])
    for n in range(5):
        await release(db, f"pkg{n}", "1.0", T0 + timedelta(days=n))
    # pkg0 and pkg1 have a cp39-specific wheel, so they want cp311 too
    for n in (0, 1):
        await db.log_build(success(
            f"pkg{n}", "1.0", "cp39",
            wheel(f"pkg{n}", "1.0", "cp39", "cp39", "linux_armv7l")))
    assert await queue(db, limit=2) == [
        ("cp311", "pkg1", "1.0"), ("cp311", "pkg0", "1.0"),
        ("cp39", "pkg4", "1.0"), ("cp39", "pkg3", "1.0"),
    ]


@pytest_twisted.ensureDeferred
async def test_builds_in_hand_are_excluded(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0", T0)
    await release(db, "bar", "1.0", T0 + timedelta(hours=1))
    assert await queue(db, exclude=[("cp39", "bar", "1.0")]) == [
        ("cp39", "foo", "1.0")]
    # excluding the same release for another ABI changes nothing
    assert await queue(db, exclude=[("cp311", "bar", "1.0")]) == [
        ("cp39", "bar", "1.0"), ("cp39", "foo", "1.0")]


@pytest_twisted.ensureDeferred
async def test_forgetting_builds_queues_the_release_again(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    wheel_file = wheel("foo", "1.0", "py3", "none", "any")
    await db.log_build(success("foo", "1.0", "cp39", wheel_file))
    assert await queue(db) == []
    assert await db.delete_build("foo", "1.0") == [wheel_file.filename]
    assert await queue(db) == [("cp39", "foo", "1.0")]
    assert await db.get_version_files("foo", "1.0") == []


@pytest_twisted.ensureDeferred
async def test_new_abi_queues_releases_with_specific_wheels(db):
    await db.set_build_abis(["cp39"])
    await release(db, "pure", "1.0")
    await release(db, "native", "1.0")
    await db.log_build(success("pure", "1.0", "cp39",
                               wheel("pure", "1.0", "py3", "none", "any")))
    await db.log_build(success(
        "native", "1.0", "cp39",
        wheel("native", "1.0", "cp39", "cp39", "linux_armv7l")))
    assert await queue(db) == []
    assert await db.set_build_abis(["cp39", "cp311"]) is True
    assert await queue(db) == [("cp311", "native", "1.0")]
    assert await db.get_queue_lengths() == {"cp39": 0, "cp311": 1}
    # the same set again changes nothing
    assert await db.set_build_abis(["cp311", "cp39"]) is False


@pytest_twisted.ensureDeferred
async def test_deleted_release_leaves_the_queue(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    await release(db, "foo", "2.0")
    await db.delete_version("foo", "1.0")
    assert await queue(db) == [("cp39", "foo", "2.0")]
    await db.delete_package("foo")
    assert await queue(db) == []


@pytest_twisted.ensureDeferred
async def test_release_time_learned_later_reorders_the_queue(db):
    await db.set_build_abis(["cp39"])
    await release(db, "old", "1.0", T0)
    await release(db, "new", "1.0", T0 + timedelta(days=1))
    await db.update_version_details("old", "1.0",
                                    released=T0 + timedelta(days=2))
    assert await queue(db) == [("cp39", "old", "1.0"), ("cp39", "new", "1.0")]
