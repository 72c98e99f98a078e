"""The keys of podman 5.4's Quadlet, per unit kind: one table drives parsing,
generation, the options classes and the key table of docs/workloads.md.

How a key's values are read is podman's (pkg/systemd/parser)::

    STRING   the last assignment, trailing blanks and surrounding quotes removed
    EXEC     the last assignment as written, split into words when it is used
    BOOL     the last assignment: 1, yes, true or on (any case) is true, anything else false
    LIST     every assignment, whole
    WORDS    every assignment split into words (quotes removed, escapes kept)
    ARGS     every assignment split into words (quotes removed, C escapes applied)
    KEYVAL   like ARGS; KEY=VALUE words, the last value of a key wins, emitted sorted

For the list kinds an empty assignment (``Label=``) drops what came before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class UnitKind(StrEnum):
    CONTAINER = "container"
    POD = "pod"
    VOLUME = "volume"
    NETWORK = "network"
    IMAGE = "image"
    KUBE = "kube"
    BUILD = "build"

    @property
    def section(self) -> str:
        return self.value.capitalize()

    def service_name(self, stem: str) -> str:
        """The name of the ``.service`` Quadlet writes for the unit *stem*.KIND
        (when the unit sets no ServiceName=)."""
        if self in (UnitKind.CONTAINER, UnitKind.KUBE):
            return f"{stem}.service"
        return f"{stem}-{self.value}.service"


class ValueKind(StrEnum):
    STRING = "string"
    EXEC = "exec"
    BOOL = "bool"
    LIST = "list"
    WORDS = "words"
    ARGS = "args"
    KEYVAL = "keyval"

    @property
    def many(self) -> bool:
        return self not in (ValueKind.STRING, ValueKind.EXEC, ValueKind.BOOL)


_FIELD_SPECIAL = {"Exec": "exec_", "IPv6": "ipv6", "IP6": "ip6"}


@dataclass(frozen=True)
class KeySpec:
    key: str
    kind: ValueKind
    help: str

    @property
    def field(self) -> str:
        """The name of the options attribute: ``DNSOption`` -> ``dns_option``."""
        if self.key in _FIELD_SPECIAL:
            return _FIELD_SPECIAL[self.key]
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", self.key)
        return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


S, E, B = ValueKind.STRING, ValueKind.EXEC, ValueKind.BOOL
L, W, A, K = ValueKind.LIST, ValueKind.WORDS, ValueKind.ARGS, ValueKind.KEYVAL

#: The [Quadlet] section, which every kind may have.
QUADLET_KEYS = (KeySpec("DefaultDependencies", B, "Wants/After network-online (default true)"),)

#: Every key podman 5.4's quadlet accepts, per kind, in the order of the docs' table.
KEYS: Mapping[UnitKind, tuple[KeySpec, ...]] = {
    UnitKind.CONTAINER: (
        KeySpec("Image", S, "image to run: a reference, NAME.image or NAME.build"),
        KeySpec("Rootfs", S, "--rootfs PATH instead of an image"),
        KeySpec("ContainerName", S, "--name (default systemd-%N, systemd-%p_%i for a template)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME)"),
        KeySpec("Exec", E, "command and arguments after the image"),
        KeySpec("Entrypoint", S, "--entrypoint"),
        KeySpec("Environment", K, "--env KEY=VALUE, several per line"),
        KeySpec("EnvironmentFile", A, "--env-file (relative to the unit's directory)"),
        KeySpec("EnvironmentHost", B, "--env-host"),
        KeySpec("PublishPort", L, "--publish"),
        KeySpec("ExposeHostPort", L, "--expose PORT[-PORT][/PROTO]"),
        KeySpec("Volume", L, "-v; SRC may be NAME.volume or a host path"),
        KeySpec("Mount", A, "--mount; source= may be NAME.volume or NAME.image"),
        KeySpec("Tmpfs", L, "--tmpfs"),
        KeySpec("VolatileTmp", B, "--tmpfs /tmp (deprecated)"),
        KeySpec("Network", L, "--network; NAME.network or NAME.container adds a dependency"),
        KeySpec("NetworkAlias", L, "--network-alias"),
        KeySpec("IP", S, "--ip"),
        KeySpec("IP6", S, "--ip6"),
        KeySpec("DNS", L, "--dns"),
        KeySpec("DNSOption", L, "--dns-option"),
        KeySpec("DNSSearch", L, "--dns-search"),
        KeySpec("AddHost", L, "--add-host"),
        KeySpec("HostName", S, "--hostname"),
        KeySpec("Pod", S, "NAME.pod to join"),
        KeySpec("StartWithPod", B, "started with its pod (default true)"),
        KeySpec("Label", K, "--label KEY=VALUE"),
        KeySpec("Annotation", K, "--annotation KEY=VALUE"),
        KeySpec("User", S, "--user USER[:GROUP]"),
        KeySpec("Group", S, "the GROUP of --user (needs User)"),
        KeySpec("GroupAdd", L, "--group-add"),
        KeySpec("UserNS", S, "--userns"),
        KeySpec("UIDMap", W, "--uidmap"),
        KeySpec("GIDMap", W, "--gidmap"),
        KeySpec("SubUIDMap", S, "--subuidname"),
        KeySpec("SubGIDMap", S, "--subgidname"),
        KeySpec("RemapUsers", S, "deprecated: manual, auto or keep-id"),
        KeySpec("RemapUid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapGid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapUidSize", S, "deprecated: size= of RemapUsers=auto"),
        KeySpec("WorkingDir", S, "--workdir"),
        KeySpec("AddDevice", W, "--device; a leading - skips a missing device"),
        KeySpec("AddCapability", W, "--cap-add (lower-cased)"),
        KeySpec("DropCapability", W, "--cap-drop (lower-cased)"),
        KeySpec("NoNewPrivileges", B, "--security-opt=no-new-privileges"),
        KeySpec("SeccompProfile", S, "--security-opt seccomp=PATH"),
        KeySpec("SecurityLabelDisable", B, "--security-opt label=disable"),
        KeySpec("SecurityLabelNested", B, "--security-opt label=nested"),
        KeySpec("SecurityLabelType", S, "--security-opt label=type:TYPE"),
        KeySpec("SecurityLabelFileType", S, "--security-opt label=filetype:TYPE"),
        KeySpec("SecurityLabelLevel", S, "--security-opt label=level:LEVEL"),
        KeySpec("Mask", A, "--security-opt mask=PATH"),
        KeySpec("Unmask", A, "--security-opt unmask=PATH"),
        KeySpec("Sysctl", W, "--sysctl"),
        KeySpec("ReadOnly", B, "--read-only"),
        KeySpec("ReadOnlyTmpfs", B, "--read-only-tmpfs"),
        KeySpec("PidsLimit", S, "--pids-limit"),
        KeySpec("ShmSize", S, "--shm-size"),
        KeySpec("Ulimit", L, "--ulimit"),
        KeySpec("CgroupsMode", S, "--cgroups (default split)"),
        KeySpec("Timezone", S, "--tz"),
        KeySpec("RunInit", B, "--init"),
        KeySpec("StopSignal", S, "--stop-signal"),
        KeySpec("StopTimeout", S, "--stop-timeout"),
        KeySpec("Pull", S, "--pull"),
        KeySpec("LogDriver", S, "--log-driver"),
        KeySpec("LogOpt", W, "--log-opt"),
        KeySpec("HealthCmd", S, "--health-cmd"),
        KeySpec("HealthInterval", S, "--health-interval"),
        KeySpec("HealthOnFailure", S, "--health-on-failure"),
        KeySpec("HealthLogDestination", S, "--health-log-destination"),
        KeySpec("HealthMaxLogCount", S, "--health-max-log-count"),
        KeySpec("HealthMaxLogSize", S, "--health-max-log-size"),
        KeySpec("HealthRetries", S, "--health-retries"),
        KeySpec("HealthStartPeriod", S, "--health-start-period"),
        KeySpec("HealthTimeout", S, "--health-timeout"),
        KeySpec("HealthStartupCmd", S, "--health-startup-cmd"),
        KeySpec("HealthStartupInterval", S, "--health-startup-interval"),
        KeySpec("HealthStartupRetries", S, "--health-startup-retries"),
        KeySpec("HealthStartupSuccess", S, "--health-startup-success"),
        KeySpec("HealthStartupTimeout", S, "--health-startup-timeout"),
        KeySpec("Notify", S, "true: --sdnotify=container; healthy: --sdnotify=healthy"),
        KeySpec("AutoUpdate", S, "--label io.containers.autoupdate=VALUE"),
        KeySpec("Secret", A, "--secret"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman run, before the image"),
    ),
    UnitKind.POD: (
        KeySpec("PodName", S, "--name (default systemd-NAME)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME-pod)"),
        KeySpec("PublishPort", L, "--publish"),
        KeySpec("Network", L, "--network; NAME.network adds a dependency"),
        KeySpec("NetworkAlias", L, "--network-alias"),
        KeySpec("IP", S, "--ip"),
        KeySpec("IP6", S, "--ip6"),
        KeySpec("DNS", L, "--dns"),
        KeySpec("DNSOption", L, "--dns-option"),
        KeySpec("DNSSearch", L, "--dns-search"),
        KeySpec("AddHost", L, "--add-host"),
        KeySpec("ShmSize", S, "--shm-size"),
        KeySpec("Volume", L, "-v; SRC may be NAME.volume or a host path"),
        KeySpec("UserNS", S, "--userns"),
        KeySpec("UIDMap", W, "--uidmap"),
        KeySpec("GIDMap", W, "--gidmap"),
        KeySpec("SubUIDMap", S, "--subuidname"),
        KeySpec("SubGIDMap", S, "--subgidname"),
        KeySpec("RemapUsers", S, "deprecated: manual, auto or keep-id"),
        KeySpec("RemapUid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapGid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapUidSize", S, "deprecated: size= of RemapUsers=auto"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman pod create"),
    ),
    UnitKind.VOLUME: (
        KeySpec("VolumeName", S, "volume name (default systemd-NAME)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME-volume)"),
        KeySpec("Driver", S, "--driver"),
        KeySpec("Image", S, "the image of Driver=image: a reference or NAME.image/NAME.build"),
        KeySpec("Device", S, "--opt device=DEVICE"),
        KeySpec("Type", S, "--opt type=TYPE (needs Device)"),
        KeySpec("Options", S, "mount options in --opt o= (needs Device)"),
        KeySpec("Copy", B, "--opt copy or nocopy"),
        KeySpec("User", S, "uid= in --opt o="),
        KeySpec("Group", S, "gid= in --opt o="),
        KeySpec("Label", K, "--label KEY=VALUE"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman volume create"),
    ),
    UnitKind.NETWORK: (
        KeySpec("NetworkName", S, "network name (default systemd-NAME)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME-network)"),
        KeySpec("Driver", S, "--driver"),
        KeySpec("IPAMDriver", S, "--ipam-driver"),
        KeySpec("Subnet", L, "--subnet"),
        KeySpec("Gateway", L, "--gateway (one per Subnet)"),
        KeySpec("IPRange", L, "--ip-range (one per Subnet)"),
        KeySpec("Internal", B, "--internal"),
        KeySpec("IPv6", B, "--ipv6"),
        KeySpec("DisableDNS", B, "--disable-dns"),
        KeySpec("DNS", L, "--dns"),
        KeySpec("Options", K, "--opt KEY=VALUE"),
        KeySpec("Label", K, "--label KEY=VALUE"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman network create"),
    ),
    UnitKind.IMAGE: (
        KeySpec("Image", S, "image to pull"),
        KeySpec("ImageTag", S, "name other units use for it (default Image)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME-image)"),
        KeySpec("AllTags", B, "--all-tags"),
        KeySpec("Arch", S, "--arch"),
        KeySpec("OS", S, "--os"),
        KeySpec("Variant", S, "--variant"),
        KeySpec("AuthFile", S, "--authfile"),
        KeySpec("CertDir", S, "--cert-dir"),
        KeySpec("Creds", S, "--creds"),
        KeySpec("DecryptionKey", S, "--decryption-key"),
        KeySpec("TLSVerify", B, "--tls-verify"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman image pull"),
    ),
    UnitKind.KUBE: (
        KeySpec("Yaml", S, "the Kubernetes YAML file (relative to the unit's directory)"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME)"),
        KeySpec("ConfigMap", W, "--configmap (relative to the unit's directory)"),
        KeySpec("PublishPort", L, "--publish"),
        KeySpec("Network", L, "--network; NAME.network adds a dependency"),
        KeySpec("AutoUpdate", W, "--annotation=io.containers.autoupdate[/CONTAINER]=POLICY"),
        KeySpec("ExitCodePropagation", S, "--service-exit-code-propagation"),
        KeySpec("KubeDownForce", B, "--force of podman kube down"),
        KeySpec("SetWorkingDirectory", S, "yaml or unit: WorkingDirectory= of the service"),
        KeySpec("LogDriver", S, "--log-driver"),
        KeySpec("LogOpt", W, "--log-opt"),
        KeySpec("UserNS", S, "--userns"),
        KeySpec("RemapUsers", S, "deprecated: auto or keep-id"),
        KeySpec("RemapUid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapGid", W, "deprecated: with RemapUsers"),
        KeySpec("RemapUidSize", S, "deprecated: size= of RemapUsers=auto"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman kube play"),
    ),
    UnitKind.BUILD: (
        KeySpec("ImageTag", L, "--tag; the first is the name other units use"),
        KeySpec("ServiceName", S, "name of the generated service (default NAME-build)"),
        KeySpec("File", S, "--file: the Containerfile (path or URL)"),
        KeySpec("SetWorkingDirectory", S, "file, unit, a path or a URL: the build context"),
        KeySpec("Target", S, "--target"),
        KeySpec("Arch", S, "--arch"),
        KeySpec("Variant", S, "--variant"),
        KeySpec("AuthFile", S, "--authfile"),
        KeySpec("Pull", S, "--pull=POLICY"),
        KeySpec("TLSVerify", B, "--tls-verify"),
        KeySpec("ForceRM", B, "--force-rm"),
        KeySpec("DNS", L, "--dns"),
        KeySpec("DNSOption", L, "--dns-option"),
        KeySpec("DNSSearch", L, "--dns-search"),
        KeySpec("GroupAdd", L, "--group-add"),
        KeySpec("Annotation", K, "--annotation KEY=VALUE"),
        KeySpec("Environment", K, "--env KEY=VALUE"),
        KeySpec("Label", K, "--label KEY=VALUE"),
        KeySpec("Network", L, "--network; NAME.network adds a dependency"),
        KeySpec("Secret", A, "--secret"),
        KeySpec("Volume", L, "-v; SRC may be NAME.volume or a host path"),
        KeySpec("ContainersConfModule", L, "--module=PATH before the subcommand"),
        KeySpec("GlobalArgs", A, "arguments to podman before the subcommand"),
        KeySpec("PodmanArgs", A, "extra arguments to podman build"),
    ),
}


@dataclass(frozen=True)
class ContainerOptions:
    image: str | None = None
    rootfs: str | None = None
    container_name: str | None = None
    service_name: str | None = None
    exec_: str | None = None
    entrypoint: str | None = None
    environment: tuple[str, ...] = ()
    environment_file: tuple[str, ...] = ()
    environment_host: bool | None = None
    publish_port: tuple[str, ...] = ()
    expose_host_port: tuple[str, ...] = ()
    volume: tuple[str, ...] = ()
    mount: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    volatile_tmp: bool | None = None
    network: tuple[str, ...] = ()
    network_alias: tuple[str, ...] = ()
    ip: str | None = None
    ip6: str | None = None
    dns: tuple[str, ...] = ()
    dns_option: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    add_host: tuple[str, ...] = ()
    host_name: str | None = None
    pod: str | None = None
    start_with_pod: bool | None = None
    label: tuple[str, ...] = ()
    annotation: tuple[str, ...] = ()
    user: str | None = None
    group: str | None = None
    group_add: tuple[str, ...] = ()
    user_ns: str | None = None
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    sub_uid_map: str | None = None
    sub_gid_map: str | None = None
    remap_users: str | None = None
    remap_uid: tuple[str, ...] = ()
    remap_gid: tuple[str, ...] = ()
    remap_uid_size: str | None = None
    working_dir: str | None = None
    add_device: tuple[str, ...] = ()
    add_capability: tuple[str, ...] = ()
    drop_capability: tuple[str, ...] = ()
    no_new_privileges: bool | None = None
    seccomp_profile: str | None = None
    security_label_disable: bool | None = None
    security_label_nested: bool | None = None
    security_label_type: str | None = None
    security_label_file_type: str | None = None
    security_label_level: str | None = None
    mask: tuple[str, ...] = ()
    unmask: tuple[str, ...] = ()
    sysctl: tuple[str, ...] = ()
    read_only: bool | None = None
    read_only_tmpfs: bool | None = None
    pids_limit: str | None = None
    shm_size: str | None = None
    ulimit: tuple[str, ...] = ()
    cgroups_mode: str | None = None
    timezone: str | None = None
    run_init: bool | None = None
    stop_signal: str | None = None
    stop_timeout: str | None = None
    pull: str | None = None
    log_driver: str | None = None
    log_opt: tuple[str, ...] = ()
    health_cmd: str | None = None
    health_interval: str | None = None
    health_on_failure: str | None = None
    health_log_destination: str | None = None
    health_max_log_count: str | None = None
    health_max_log_size: str | None = None
    health_retries: str | None = None
    health_start_period: str | None = None
    health_timeout: str | None = None
    health_startup_cmd: str | None = None
    health_startup_interval: str | None = None
    health_startup_retries: str | None = None
    health_startup_success: str | None = None
    health_startup_timeout: str | None = None
    notify: str | None = None
    auto_update: str | None = None
    secret: tuple[str, ...] = ()
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodOptions:
    pod_name: str | None = None
    service_name: str | None = None
    publish_port: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    network_alias: tuple[str, ...] = ()
    ip: str | None = None
    ip6: str | None = None
    dns: tuple[str, ...] = ()
    dns_option: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    add_host: tuple[str, ...] = ()
    shm_size: str | None = None
    volume: tuple[str, ...] = ()
    user_ns: str | None = None
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    sub_uid_map: str | None = None
    sub_gid_map: str | None = None
    remap_users: str | None = None
    remap_uid: tuple[str, ...] = ()
    remap_gid: tuple[str, ...] = ()
    remap_uid_size: str | None = None
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeOptions:
    volume_name: str | None = None
    service_name: str | None = None
    driver: str | None = None
    image: str | None = None
    device: str | None = None
    type: str | None = None
    options: str | None = None
    copy: bool | None = None
    user: str | None = None
    group: str | None = None
    label: tuple[str, ...] = ()
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkOptions:
    network_name: str | None = None
    service_name: str | None = None
    driver: str | None = None
    ipam_driver: str | None = None
    subnet: tuple[str, ...] = ()
    gateway: tuple[str, ...] = ()
    ip_range: tuple[str, ...] = ()
    internal: bool | None = None
    ipv6: bool | None = None
    disable_dns: bool | None = None
    dns: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageOptions:
    image: str | None = None
    image_tag: str | None = None
    service_name: str | None = None
    all_tags: bool | None = None
    arch: str | None = None
    os: str | None = None
    variant: str | None = None
    auth_file: str | None = None
    cert_dir: str | None = None
    creds: str | None = None
    decryption_key: str | None = None
    tls_verify: bool | None = None
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class KubeOptions:
    yaml: str | None = None
    service_name: str | None = None
    config_map: tuple[str, ...] = ()
    publish_port: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    auto_update: tuple[str, ...] = ()
    exit_code_propagation: str | None = None
    kube_down_force: bool | None = None
    set_working_directory: str | None = None
    log_driver: str | None = None
    log_opt: tuple[str, ...] = ()
    user_ns: str | None = None
    remap_users: str | None = None
    remap_uid: tuple[str, ...] = ()
    remap_gid: tuple[str, ...] = ()
    remap_uid_size: str | None = None
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildOptions:
    image_tag: tuple[str, ...] = ()
    service_name: str | None = None
    file: str | None = None
    set_working_directory: str | None = None
    target: str | None = None
    arch: str | None = None
    variant: str | None = None
    auth_file: str | None = None
    pull: str | None = None
    tls_verify: bool | None = None
    force_rm: bool | None = None
    dns: tuple[str, ...] = ()
    dns_option: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    annotation: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()
    volume: tuple[str, ...] = ()
    containers_conf_module: tuple[str, ...] = ()
    global_args: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


Options = (
    ContainerOptions
    | PodOptions
    | VolumeOptions
    | NetworkOptions
    | ImageOptions
    | KubeOptions
    | BuildOptions
)
OPTION_CLASSES: Mapping[UnitKind, type[Options]] = {
    UnitKind.CONTAINER: ContainerOptions,
    UnitKind.POD: PodOptions,
    UnitKind.VOLUME: VolumeOptions,
    UnitKind.NETWORK: NetworkOptions,
    UnitKind.IMAGE: ImageOptions,
    UnitKind.KUBE: KubeOptions,
    UnitKind.BUILD: BuildOptions,
}


def key_table_markdown() -> str:
    """The key table of docs/workloads.md, made from :data:`KEYS` (a test compares them)."""
    blocks = []
    for kind in UnitKind:
        rows = [f"#### `[{kind.section}]` ({len(KEYS[kind])} keys)", ""]
        rows += ["| key | read as | becomes |", "| --- | --- | --- |"]
        rows += [f"| `{s.key}` | {s.kind.value} | {s.help.replace('|', '/')} |" for s in KEYS[kind]]
        blocks.append("\n".join(rows))
    quadlet = [f"| `{s.key}` | {s.kind.value} | {s.help} |" for s in QUADLET_KEYS]
    blocks.append(
        "\n".join(
            [
                "#### `[Quadlet]` (every kind)",
                "",
                "| key | read as | becomes |",
                "| --- | --- | --- |",
                *quadlet,
            ]
        )
    )
    return "\n\n".join(blocks) + "\n"
