"""The environment the suite runs in is exactly the committed lock.

`make test` syncs `.venv` to `lock/requirements-test.txt`; these tests read the installed
distributions (what `pip freeze` lists) and hold them against the lock, so a green suite
names the versions it passed with.
"""

from __future__ import annotations

import re
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

LOCK_DIR = Path(__file__).resolve().parent.parent / "lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """The name -> version pins of one lock file, with every pin's hashes checked present."""
    pins: dict[str, str] = {}
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        match = PIN.match(line)
        if match is None:
            continue
        name = normalized(match.group(1))
        assert name not in pins, f"{path.name}: {name} is pinned twice"
        assert index + 1 < len(lines) and "--hash=sha256:" in lines[index + 1], (
            f"{path.name}: {name} has no hash"
        )
        pins[name] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """Every distribution installed in this environment but fedwarden itself (editable).

    Only the environment's own site-packages are read: some packages put folders of their
    own on ``sys.path`` once imported (Ray its vendored ``thirdparty_files``).
    """
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = {
        normalized(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions(path=site_packages)
    }
    found.pop("fedwarden", None)
    return found


def test_the_environment_is_exactly_the_test_lock() -> None:
    pins = locked(LOCK_DIR / "requirements-test.txt")
    present = installed()
    missing = sorted(f"{name}=={version}" for name, version in pins.items() if name not in present)
    extra = sorted(f"{name}=={version}" for name, version in present.items() if name not in pins)
    different = sorted(
        f"{name}: installed {present[name]}, locked {version}"
        for name, version in pins.items()
        if name in present and present[name] != version
    )
    assert (missing, extra, different) == ([], [], []), (
        "the environment differs from lock/requirements-test.txt; run `make test` (it syncs "
        "the environment to the lock) or, after changing pyproject.toml, `make lock`"
    )


def test_the_demo_lock_is_a_subset_of_the_test_lock() -> None:
    test_pins = locked(LOCK_DIR / "requirements-test.txt")
    demo_pins = locked(LOCK_DIR / "requirements-demo.txt")
    assert {name: test_pins.get(name) for name in demo_pins} == demo_pins


@pytest.mark.parametrize("name", ["demo", "test", "bench"])
def test_every_lock_pins_the_cpu_build_of_torch(name: str) -> None:
    assert locked(LOCK_DIR / f"requirements-{name}.txt")["torch"] == "2.13.0+cpu"


def test_packages_that_extend_the_import_path_do_not_count_as_installed() -> None:
    import ray  # noqa: F401  (puts ray/thirdparty_files on sys.path)

    assert set(installed()) <= set(locked(LOCK_DIR / "requirements-test.txt"))
