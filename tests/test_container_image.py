"""The Dockerfile built into an image and run: ``fedwarden --help`` and a two-client run in it.

The image is built with podman from a base made of Debian's packages (deploy/base-image.sh),
because no container registry is reachable from the machines this suite runs on (Debian's
mirror and PyPI are). Its commands run with buildah's chroot isolation: ``podman run`` needs an
OCI runtime, and on these machines both fail before the container starts, crun with "cgroups in
hybrid mode not supported" (the cgroup v1 controllers are mounted one by one under a tmpfs) and
runc unable to mount the container's cgroup, while neither may set RLIMIT_NPROC without
CAP_SYS_RESOURCE, which the machine withholds. Chroot isolation runs the image's file system,
user (uid 10001) and entrypoint on the host's network, so the federation talks over loopback.

The image is built without PyTorch (``TORCH_INDEX`` and ``EXTRAS`` empty): the runs here use
NumPy models, and the CPU wheel's index is not reachable either. .ci/run installs podman,
buildah and debootstrap as root; elsewhere the tests skip and say what to install.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpc_federation import Federation
from machine import unavailable

REPOSITORY = Path(__file__).resolve().parents[1]
BASE = "localhost/fedwarden-base:bookworm"
TOOLS = ("podman", "buildah", "debootstrap")

pytestmark = pytest.mark.slow


def _run(*command: str, timeout: float = 900) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _proxy_mounts() -> list[str]:
    """pip's configuration and CA bundle of this machine, for a registry proxy with its own CA."""
    mounts = []
    for path in ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"):
        if Path(path).is_file():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image of this working tree, built from the Debian base without PyTorch."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(
            f"{', '.join(missing)} not installed: as root, `apt-get install podman buildah "
            "debootstrap` (what .ci/run does) lets these tests build and run the image"
        )
    if os.geteuid() != 0:
        unavailable("building the base image with debootstrap needs root")
    if subprocess.run(["podman", "image", "exists", BASE], check=False).returncode != 0:
        _run(str(REPOSITORY / "deploy" / "base-image.sh"), BASE)
    tag = f"localhost/fedwarden-test:{uuid.uuid4().hex[:12]}"
    _run(
        "podman", "build", "--isolation", "chroot", "--network", "host", *_proxy_mounts(),
        "--build-arg", f"BASE={BASE}", "--build-arg", "TORCH_INDEX=", "--build-arg", "EXTRAS=",
        "--tag", tag, str(REPOSITORY),
    )  # fmt: skip
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, check=False)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A working container of the image (each ``buildah run`` in it is a fresh process)."""
    name = _run("buildah", "from", "--name", f"fedwarden-{uuid.uuid4().hex[:12]}", image).strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def _in(container: str, *mounts: Path) -> tuple[str, ...]:
    """The command prefix that runs the image's entrypoint in ``container`` on the host network."""
    volumes = [option for path in mounts for option in ("--volume", f"{path}:{path}")]
    return (
        "buildah", "run", "--isolation", "chroot", "--network", "host", *volumes, container,
        "--", "fedwarden",
    )  # fmt: skip


def test_the_image_runs_fedwarden_as_an_unprivileged_user(container: str) -> None:
    help_text = _run(*_in(container), "--help")
    for command in ("server", "client", "run", "audit", "pki"):
        assert command in help_text, f"`fedwarden --help` in the image does not list {command}"
    from importlib.metadata import version

    assert _run(*_in(container), "--version").split() == ["fedwarden", version("fedwarden")]
    uid = _run("buildah", "run", "--isolation", "chroot", container, "--", "id", "-u")
    assert uid.strip() == "10001"


def test_a_server_and_two_clients_in_the_image_train_over_mutual_tls(
    container: str, tmp_path: Path
) -> None:
    federation = Federation.create(tmp_path, sites=2)
    federation.launcher = _in(container, tmp_path)
    # The image's user (uid 10001) reads the kits and data and writes the store and run directory.
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IRWXO if path.is_dir() else 0o666)
    try:
        federation.start_server()
        federation.start_clients()
        assert federation.wait_server() == 0, federation.server_output()
    finally:
        federation.stop()
    records = federation.completed_rounds()
    assert [record["participants"] for record in records] == [2, 2, 2], federation.server_output()
    assert all(record["applied"] for record in records)
    assert records[-1]["accuracy"] > records[0]["accuracy"]
    for process in federation.clients.values():
        assert process.wait(timeout=30) == 0
    assert federation.summary()["registered_model"] == "deployed@1.0.0"
