"""The deployment's Dockerfile, Kubernetes manifests and README agree with each other and the CLI.

No Docker engine or cluster is needed: the manifests are read with PyYAML, the Dockerfile line by
line, and the README's ``fedwarden pki`` and ``kubectl create secret`` commands are followed in a
temporary folder (the former through the real CLI).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer.main
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from fedwarden.core.config import RunConfig, load_config
from fedwarden.data import load_dataset

REPOSITORY = Path(__file__).resolve().parents[1]
MANIFESTS = REPOSITORY / "deploy" / "k8s"
README = REPOSITORY / "deploy" / "README.md"
DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
CONSTRAINTS = REPOSITORY / "lock" / "constraints.txt"
NAMESPACE = "fedwarden"

EXPECTED_KINDS = {
    "namespace.yaml": {("v1", "Namespace")},
    "configmap.yaml": {("v1", "ConfigMap")},
    "server.yaml": {("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"), ("v1", "Service")},
    "client.yaml": {("v1", "PersistentVolumeClaim"), ("batch/v1", "Job")},
}
"""The (apiVersion, kind) pairs each manifest file holds, and nothing else."""

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

VALUELESS_OPTIONS = frozenset({"--insecure"})
"""Options of ``fedwarden server`` and ``client`` that take no value (checked against the CLI)."""

PATH_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "server": {"--identity": ("secret",), "--store": ("persistentVolumeClaim",)},
    "client": {
        "--identity": ("secret",),
        "--data": ("persistentVolumeClaim",),
        "--state-dir": ("persistentVolumeClaim", "emptyDir"),
    },
}
"""Per subcommand: each option naming a path in the container, and the volume kinds it may use."""

GIVEN_PATH_OPTIONS = {"server": ("--identity", "--store"), "client": ("--identity", "--data")}
"""The path options the manifests must give: kits from Secrets, store and data on claims."""

STARTUP_KIT_FILES = {
    "server": {"tls.crt", "tls.key", "ca.crt", "audit.key", "audit.pub"},
    "client": {"tls.crt", "tls.key", "ca.crt", "identity.key", "identity.pub"},
}
"""The files of a startup kit made by ``fedwarden pki issue server|client``."""

SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class Manifest:
    """One YAML document under deploy/k8s and the file it came from."""

    file_name: str
    document: Mapping[str, Any]

    @property
    def kind(self) -> str:
        """The document's ``kind``."""
        return str(self.document["kind"])

    @property
    def name(self) -> str:
        """The document's ``metadata.name``."""
        return str(self.document["metadata"]["name"])


@dataclass(frozen=True)
class Invocation:
    """A container's ``fedwarden`` command line, read as subcommand, positionals and options."""

    subcommand: str
    positionals: tuple[str, ...]
    options: Mapping[str, str | None]


@dataclass(frozen=True)
class Container:
    """One container of a workload, with the pod spec around it."""

    workload: str
    pod_spec: Mapping[str, Any]
    spec: Mapping[str, Any]

    @property
    def arguments(self) -> list[str]:
        """The container's arguments, which follow the image's ``fedwarden`` entrypoint."""
        return [str(argument) for argument in self.spec["args"]]

    def invocation(self, valueless: frozenset[str] = VALUELESS_OPTIONS) -> Invocation:
        """The arguments read as ``SUBCOMMAND [POSITIONAL ...] [--option [VALUE] ...]``."""
        subcommand, *rest = self.arguments
        positionals: list[str] = []
        options: dict[str, str | None] = {}
        tokens = iter(rest)
        for token in tokens:
            if not token.startswith("--"):
                positionals.append(token)
            elif "=" in token:
                name, value = token.split("=", 1)
                options[name] = value
            else:
                options[token] = None if token in valueless else next(tokens, None)
        return Invocation(subcommand, tuple(positionals), options)

    def mount_holding(self, path: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The volume mount whose folder holds ``path`` (the deepest one), and its volume."""
        target = PurePosixPath(path)
        holding = [
            mount
            for mount in self.spec.get("volumeMounts", [])
            if target == PurePosixPath(mount["mountPath"])
            or PurePosixPath(mount["mountPath"]) in target.parents
        ]
        assert holding, f"{self.workload}: {path} is on no volume mount of the container"
        mount = max(holding, key=lambda mount: len(PurePosixPath(mount["mountPath"]).parts))
        volumes = {volume["name"]: volume for volume in self.pod_spec.get("volumes", [])}
        assert mount["name"] in volumes, f"{self.workload}: mount {mount['name']} has no volume"
        return mount, volumes[mount["name"]]

    def port_number(self, port: int | str) -> int:
        """A container port given by number or by name, as a number."""
        if isinstance(port, int):
            return port
        named = {entry["name"]: entry["containerPort"] for entry in self.spec.get("ports", [])}
        assert port in named, f"{self.workload}: no container port is named {port!r}"
        return int(named[port])


@cache
def manifests() -> tuple[Manifest, ...]:
    """Every YAML document under deploy/k8s, file by file."""
    return tuple(
        Manifest(path.name, document)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    )


def of_kind(kind: str) -> list[Manifest]:
    """The manifests of one kind."""
    return [manifest for manifest in manifests() if manifest.kind == kind]


def containers(subcommand: str | None = None) -> list[Container]:
    """Every container of every workload, or those running one ``fedwarden`` subcommand."""
    found = [
        Container(
            manifest.name,
            manifest.document["spec"]["template"]["spec"],
            container,
        )
        for manifest in manifests()
        if manifest.kind in WORKLOAD_KINDS
        for container in manifest.document["spec"]["template"]["spec"]["containers"]
    ]
    return [
        container
        for container in found
        if subcommand is None or container.arguments[:1] == [subcommand]
    ]


def server_container() -> Container:
    """The one container running ``fedwarden server``."""
    (server,) = containers("server")
    return server


def port_of(address: str) -> int:
    """The port of a ``HOST:PORT`` address."""
    host, separator, port = address.rpartition(":")
    assert separator and host and port.isdigit(), f"{address!r} is not HOST:PORT"
    return int(port)


def readme_commands(program: str) -> list[list[str]]:
    """The README's shell commands that run ``program``, split into words (comments dropped).

    A command runs on over continued lines and over quotes that span lines.
    """
    text = README.read_text().replace("\\\n", " ")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        pending: list[str] = []
        for line in block.splitlines():
            if pending or line.strip().startswith(f"{program} "):
                pending.append(line)
                try:
                    commands.append(shlex.split("\n".join(pending), comments=True))
                except ValueError:
                    continue
                pending = []
        assert not pending, f"unclosed quote in the README: {pending}"
    return commands


def option_value(words: Sequence[str], *names: str) -> str | None:
    """The value of the first of ``names`` in a command (``--name value`` or ``--name=value``)."""
    for index, word in enumerate(words):
        for name in names:
            if word == name and index + 1 < len(words):
                return words[index + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, rest), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            instructions.append((instruction.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage, the image that runs."""
    instructions = dockerfile_instructions()
    starts = [index for index, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def the_only(instruction: str, stage: Sequence[tuple[str, str]]) -> str:
    """The argument of the one ``instruction`` of a stage."""
    found = [rest for name, rest in stage if name == instruction]
    assert len(found) == 1, f"the final stage has {len(found)} {instruction} instructions, not one"
    return found[0]


@dataclass(frozen=True)
class ReadmeSecret:
    """A Secret made by a ``kubectl create secret generic`` command of the README."""

    name: str
    keys: frozenset[str]
    sources: tuple[Path, ...]

    def certificate(self) -> x509.Certificate:
        """The TLS certificate (key ``tls.crt``) the Secret is made with."""
        (certificate_file,) = [
            path
            for source in self.sources
            for path in (source / "tls.crt", source)
            if path.is_file() and path.name == "tls.crt"
        ]
        return x509.load_pem_x509_certificate(certificate_file.read_bytes())


def is_secret_creation(words: Sequence[str]) -> bool:
    """Whether a kubectl command line creates a generic Secret."""
    return any(
        list(words[index : index + 3]) == ["create", "secret", "generic"]
        for index in range(len(words))
    )


@pytest.fixture
def secrets_from_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, ReadmeSecret]:
    """Follow the README's ``fedwarden pki`` and ``kubectl create secret`` commands in tmp_path."""
    from fedwarden.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    pki_commands = [words for words in readme_commands("fedwarden") if words[1] == "pki"]
    assert pki_commands, "the README provisions no certificates"
    for words in pki_commands:
        result = runner.invoke(app, words[1:])
        assert result.exit_code == 0, f"{shlex.join(words)} failed: {result.output}"
    secrets: dict[str, ReadmeSecret] = {}
    for words in filter(is_secret_creation, readme_commands("kubectl")):
        assert option_value(words, "-n", "--namespace") == NAMESPACE, shlex.join(words)
        keys: set[str] = set()
        sources: list[Path] = []
        for word in words:
            if not word.startswith("--from-file="):
                continue
            key, _, path = word.removeprefix("--from-file=").rpartition("=")
            source = tmp_path / path
            assert source.exists(), f"{shlex.join(words)}: the README's pki commands make no {path}"
            sources.append(source)
            if key:
                keys.add(key)
            elif source.is_dir():
                keys.update(entry.name for entry in source.iterdir() if entry.is_file())
            else:
                keys.add(source.name)
        name = words[words.index("generic") + 1]
        secrets[name] = ReadmeSecret(name, frozenset(keys), tuple(sources))
    return secrets


def test_every_manifest_is_a_known_kind_and_api_version_in_the_fedwarden_namespace() -> None:
    files = {path.name for path in MANIFESTS.glob("*.yaml")}
    assert files == set(EXPECTED_KINDS)
    for file_name, expected in EXPECTED_KINDS.items():
        found = {
            (manifest.document["apiVersion"], manifest.kind)
            for manifest in manifests()
            if manifest.file_name == file_name
        }
        assert found == expected, file_name
    for manifest in manifests():
        metadata = manifest.document["metadata"]
        if manifest.kind == "Namespace":
            assert metadata["name"] == NAMESPACE
        else:
            assert metadata.get("namespace") == NAMESPACE, f"{manifest.kind} {manifest.name}"


def test_every_container_runs_a_real_fedwarden_subcommand_with_only_its_real_options() -> None:
    from fedwarden.cli import app

    click_group = typer.main.get_command(app)
    # Typer may bundle its own copy of click, so commands are recognised by shape, not class.
    assert hasattr(click_group, "commands")
    assert containers(), "no workload runs a container"
    for container in containers():
        assert "command" not in container.spec, (
            f"{container.workload}: a command would replace the image's fedwarden entrypoint"
        )
        subcommand = container.arguments[0]
        assert subcommand in click_group.commands, (
            f"{container.workload}: fedwarden has no {subcommand!r} command "
            f"(it has {sorted(click_group.commands)})"
        )
        command = click_group.commands[subcommand]
        options = [param for param in command.params if param.param_type_name == "option"]
        arguments = [param for param in command.params if param.param_type_name == "argument"]
        known = {name for option in options for name in (*option.opts, *option.secondary_opts)}
        valueless = frozenset(
            name
            for option in options
            if option.is_flag or option.count
            for name in (*option.opts, *option.secondary_opts)
        )
        invocation = container.invocation(valueless)
        assert invocation == container.invocation(), (
            f"{container.workload}: the CLI's value-less options are {sorted(valueless)}; "
            f"update VALUELESS_OPTIONS"
        )
        unknown = set(invocation.options) - known
        assert not unknown, f"{container.workload}: fedwarden {subcommand} has no {unknown}"
        for option in options:
            if option.required:
                assert set(option.opts) & set(invocation.options), (
                    f"{container.workload}: fedwarden {subcommand} requires {option.opts[0]}"
                )
        for name, value in invocation.options.items():
            if name not in valueless:
                assert value is not None, f"{container.workload}: {name} has no value"
        required = sum(argument.nargs for argument in arguments if argument.required)
        assert required <= len(invocation.positionals), container.arguments
        if all(argument.nargs > 0 for argument in arguments):
            assert len(invocation.positionals) <= sum(argument.nargs for argument in arguments)


def test_server_runs_as_one_replica_that_stops_before_its_successor_starts() -> None:
    (deployment,) = of_kind("Deployment")
    assert deployment.document["spec"]["replicas"] == 1
    assert deployment.document["spec"]["strategy"]["type"] == "Recreate"
    labels = deployment.document["spec"]["template"]["metadata"]["labels"]
    selector = deployment.document["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()


def test_server_ports_match_its_addresses_in_the_deployment_and_the_service() -> None:
    server = server_container()
    options = server.invocation().options
    grpc_port = port_of(str(options["--address"]))
    health_port = port_of(str(options["--health-address"]))
    assert (grpc_port, health_port) == (8443, 8080)
    container_ports = {int(entry["containerPort"]) for entry in server.spec["ports"]}
    assert container_ports == {grpc_port, health_port}

    (deployment,) = of_kind("Deployment")
    pod_labels = deployment.document["spec"]["template"]["metadata"]["labels"]
    (service,) = of_kind("Service")
    assert service.document["spec"]["selector"].items() <= pod_labels.items()
    service_ports = service.document["spec"]["ports"]
    targets = {server.port_number(entry["targetPort"]) for entry in service_ports}
    assert targets == {grpc_port, health_port}
    assert all(entry["port"] == server.port_number(entry["targetPort"]) for entry in service_ports)


def test_probes_ask_for_healthz_on_the_health_port() -> None:
    server = server_container()
    health_port = port_of(str(server.invocation().options["--health-address"]))
    for probe_name in ("livenessProbe", "readinessProbe"):
        probe = server.spec[probe_name]["httpGet"]
        assert probe["path"] == "/healthz", probe_name
        assert server.port_number(probe["port"]) == health_port, probe_name
        assert probe.get("scheme", "HTTP") == "HTTP", probe_name


def test_clients_dial_the_server_service_on_its_grpc_port() -> None:
    (service,) = of_kind("Service")
    server = server_container()
    grpc_port = port_of(str(server.invocation().options["--address"]))
    service_host = f"{service.name}.{NAMESPACE}.svc"
    clients = containers("client")
    assert clients, "no workload runs fedwarden client"
    for client in clients:
        address = str(client.invocation().options["--server"])
        host, _, port = address.rpartition(":")
        assert host in (service_host, f"{service_host}.cluster.local"), client.workload
        (entry,) = [
            entry for entry in service.document["spec"]["ports"] if entry["port"] == int(port)
        ]
        assert server.port_number(entry["targetPort"]) == grpc_port, client.workload


def test_every_path_argument_is_on_a_mounted_volume_of_the_right_kind() -> None:
    claims = {manifest.name for manifest in of_kind("PersistentVolumeClaim")}
    for container in containers():
        invocation = container.invocation()
        for name in GIVEN_PATH_OPTIONS[invocation.subcommand]:
            assert name in invocation.options, f"{container.workload}: give {name}"
        paths = {
            name: str(value)
            for name, value in invocation.options.items()
            if name in PATH_OPTIONS[invocation.subcommand]
        }
        if "--store" in paths:
            assert paths["--store"].startswith(SQLITE_PREFIX), paths["--store"]
            paths["--store"] = paths["--store"].removeprefix(SQLITE_PREFIX)
        for name, path in paths.items():
            assert PurePosixPath(path).is_absolute(), f"{container.workload}: {name} {path}"
            mount, volume = container.mount_holding(path)
            kinds = PATH_OPTIONS[invocation.subcommand][name]
            assert any(kind in volume for kind in kinds), (
                f"{container.workload}: {name} {path} is on none of {kinds}"
            )
            if "secret" in volume:
                assert mount.get("readOnly") is True, f"{container.workload}: {name}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, container.workload


def server_run_config(folder: Path) -> RunConfig:
    """The server's run config: the ConfigMap entry its CONFIG argument names, loaded."""
    server = server_container()
    (config_path,) = server.invocation().positionals
    mount, volume = server.mount_holding(config_path)
    assert "configMap" in volume, f"{config_path} is not on a ConfigMap volume"
    key = str(PurePosixPath(config_path).relative_to(mount["mountPath"]))
    config_maps = {manifest.name: manifest.document for manifest in of_kind("ConfigMap")}
    config_map = config_maps[volume["configMap"]["name"]]
    assert key in config_map["data"], f"ConfigMap {volume['configMap']['name']} has no {key}"
    written = folder / key
    written.write_text(config_map["data"][key])
    return load_config(written)


def test_server_config_in_the_config_map_is_a_valid_run_config_on_the_state_volume(
    tmp_path: Path,
) -> None:
    config = server_run_config(tmp_path)
    assert config.data.source == "digits"
    assert config.runs_dir.is_absolute()
    _, runs_volume = server_container().mount_holding(str(config.runs_dir))
    assert "persistentVolumeClaim" in runs_volume, f"runs_dir {config.runs_dir} would not persist"


def test_client_certificates_name_exactly_the_clients_the_server_expects(
    tmp_path: Path, secrets_from_readme: dict[str, ReadmeSecret]
) -> None:
    config = server_run_config(tmp_path)
    expected = load_dataset(config.data, config.seed).client_ids
    names = []
    for client in containers("client"):
        _, volume = client.mount_holding(str(client.invocation().options["--identity"]))
        certificate = secrets_from_readme[volume["secret"]["secretName"]].certificate()
        (common_name,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names.append(common_name.value)
    assert sorted(names) == sorted(expected), "each expected client needs exactly one Job"


def test_every_volume_names_a_claim_config_map_or_secret_that_is_provided(
    secrets_from_readme: dict[str, ReadmeSecret],
) -> None:
    config_maps = {manifest.name for manifest in of_kind("ConfigMap")}
    claims = {manifest.name for manifest in of_kind("PersistentVolumeClaim")}
    secrets = set(secrets_from_readme) | {manifest.name for manifest in of_kind("Secret")}
    for container in containers():
        mounted = {mount["name"] for mount in container.spec.get("volumeMounts", [])}
        for volume in container.pod_spec["volumes"]:
            assert volume["name"] in mounted, f"{container.workload}: {volume['name']} is unused"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (
                    f"{container.workload}: Secret {volume['secret']['secretName']} is neither "
                    "a manifest nor made by a `kubectl create secret` command in the README"
                )


def test_every_identity_secret_holds_the_startup_kit_its_subcommand_needs(
    secrets_from_readme: dict[str, ReadmeSecret],
) -> None:
    for container in containers():
        invocation = container.invocation()
        _, volume = container.mount_holding(str(invocation.options["--identity"]))
        name = volume["secret"]["secretName"]
        assert name in secrets_from_readme, f"{container.workload}: no README command makes {name}"
        missing = STARTUP_KIT_FILES[invocation.subcommand] - secrets_from_readme[name].keys
        assert not missing, f"Secret {name} lacks {sorted(missing)} for {invocation.subcommand}"


def test_server_certificate_names_the_host_clients_dial(
    secrets_from_readme: dict[str, ReadmeSecret],
) -> None:
    server = server_container()
    _, volume = server.mount_holding(str(server.invocation().options["--identity"]))
    certificate = secrets_from_readme[volume["secret"]["secretName"]].certificate()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names = set(names.get_values_for_type(x509.DNSName))
    for client in containers("client"):
        host = str(client.invocation().options["--server"]).rpartition(":")[0]
        assert host in dns_names, f"the server certificate names {dns_names}, not {host}"


def test_readme_applies_existing_manifests_and_its_selectors_match_documents() -> None:
    applied: set[str] = set()
    for words in readme_commands("kubectl"):
        if "apply" not in words:
            continue
        path = Path(str(option_value(words, "-f", "--filename")))
        assert (REPOSITORY / path).is_file(), shlex.join(words)
        applied.add(path.name)
        selector = option_value(words, "-l", "--selector")
        if selector is not None:
            key, _, value = selector.partition("=")
            selected = [
                manifest
                for manifest in manifests()
                if manifest.file_name == path.name
                and manifest.document["metadata"].get("labels", {}).get(key) == value
            ]
            assert selected, f"{shlex.join(words)} selects nothing"
    assert applied == set(EXPECTED_KINDS)


def test_containers_run_the_image_the_readme_builds() -> None:
    (build,) = [words for words in readme_commands("docker") if words[1] == "build"]
    tag = option_value(build, "-t", "--tag")
    assert tag is not None
    assert {str(container.spec["image"]) for container in containers()} == {tag}


def test_dockerfile_entrypoint_is_fedwarden_and_exposes_the_server_ports() -> None:
    stage = final_stage()
    assert json.loads(the_only("ENTRYPOINT", stage)) == ["fedwarden"]
    exposed = {int(port.split("/")[0]) for port in the_only("EXPOSE", stage).split()}
    server = server_container()
    options = server.invocation().options
    assert exposed == {
        port_of(str(options["--address"])),
        port_of(str(options["--health-address"])),
    }


def test_dockerfile_runs_as_the_non_root_user_the_pods_require() -> None:
    user, _, group = the_only("USER", final_stage()).partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid"
    for container in containers():
        context = container.pod_spec["securityContext"]
        assert context["runAsNonRoot"] is True, container.workload
        assert context["runAsUser"] == int(user), container.workload
        if group:
            assert context["runAsGroup"] == int(group), container.workload
        assert container.spec["securityContext"]["allowPrivilegeEscalation"] is False


def test_dockerfile_builds_on_python_3_11_slim_with_the_locks_cpu_torch() -> None:
    instructions = dockerfile_instructions()
    defaults = dict(
        rest.split("=", 1) for name, rest in instructions if name == "ARG" and "=" in rest
    )
    bases = [rest.split()[0] for name, rest in instructions if name == "FROM"]
    assert bases and all(base == "${BASE}" for base in bases)
    assert defaults["BASE"] == "python:3.11-slim"
    (torch_pin,) = re.findall(r"^(torch==\S+)$", CONSTRAINTS.read_text(), flags=re.MULTILINE)
    runs = [rest for name, rest in instructions if name == "RUN"]
    torch_install = next(index for index, rest in enumerate(runs) if torch_pin in rest.split())
    assert '"$TORCH_INDEX"' in runs[torch_install].split()
    assert defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    package_install = next(index for index, rest in enumerate(runs) if "${EXTRAS:+" in rest)
    assert defaults["EXTRAS"] == "torch"
    assert torch_install < package_install


def ignored(path: str, patterns: Sequence[str]) -> bool:
    """Whether a .dockerignore pattern (``**/`` meaning any depth) excludes ``path``."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(
        fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(candidate, f"*/{pattern[3:]}")
        if pattern.startswith("**/")
        else fnmatch.fnmatch(candidate, pattern)
        for candidate in candidates
        for pattern in patterns
    )


def copied_sources() -> Iterator[str]:
    """The build-context paths the Dockerfile's COPY instructions read."""
    for name, rest in dockerfile_instructions():
        words = rest.split()
        if name == "COPY" and not any(word.startswith("--from=") for word in words):
            yield from (word for word in words[:-1] if not word.startswith("--"))


def test_dockerignore_keeps_out_environments_runs_and_caches_but_not_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for unwanted in (".venv", "runs", ".git", "src/fedwarden/__pycache__", ".mypy_cache", "pki"):
        assert ignored(unwanted, patterns), f".dockerignore lets {unwanted} into the image"
    sources = list(copied_sources())
    assert "src" in sources
    for source in sources:
        assert (REPOSITORY / source).exists(), f"COPY {source}: no such path in the repository"
        assert not ignored(source, patterns), f"COPY {source}, but .dockerignore excludes it"
