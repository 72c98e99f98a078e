"""Each Quadlet kind turned into its service, argument for argument as podman 5.4's
quadlet (pkg/systemd/quadlet) does it; tests/workloads/test_parity.py runs both.

Where podman walks a Go map (the single-value flags of a container, say) its
order changes from run to run; atoll writes those groups in the order of the
tables below, and the parity test compares each such group as a set.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

from atoll.errors import QuadletUnitError
from atoll.workloads.unitfiles.keys import (
    BuildOptions,
    ContainerOptions,
    ImageOptions,
    KubeOptions,
    NetworkOptions,
    PodOptions,
    VolumeOptions,
)
from atoll.workloads.unitfiles.quadlet import QuadletUnit, UnitKind, split_words
from atoll.workloads.unitfiles.service import (
    PODMAN,
    Resolver,
    ServiceBuilder,
    container_name,
    is_kind,
)

#: The groups podman fills from a Go map: (field, flag), in atoll's order.
CONTAINER_STRINGS = (
    ("timezone", "--tz"), ("pids_limit", "--pids-limit"), ("shm_size", "--shm-size"),
    ("entrypoint", "--entrypoint"), ("working_dir", "--workdir"), ("ip", "--ip"),
    ("ip6", "--ip6"), ("host_name", "--hostname"), ("stop_signal", "--stop-signal"),
    ("stop_timeout", "--stop-timeout"), ("pull", "--pull"),
)  # fmt: skip
CONTAINER_LISTS = (
    ("network_alias", "--network-alias"), ("ulimit", "--ulimit"), ("dns", "--dns"),
    ("dns_option", "--dns-option"), ("dns_search", "--dns-search"),
    ("group_add", "--group-add"), ("add_host", "--add-host"), ("tmpfs", "--tmpfs"),
)  # fmt: skip
CONTAINER_BOOLS = (
    ("run_init", "--init"), ("environment_host", "--env-host"),
    ("read_only_tmpfs", "--read-only-tmpfs"),
)  # fmt: skip
POD_STRINGS = (("ip", "--ip"), ("ip6", "--ip6"), ("shm_size", "--shm-size"))
POD_LISTS = (
    ("network_alias", "--network-alias"), ("dns", "--dns"), ("dns_option", "--dns-option"),
    ("dns_search", "--dns-search"), ("add_host", "--add-host"),
)  # fmt: skip
NETWORK_BOOLS = (("disable_dns", "--disable-dns"), ("internal", "--internal"), ("ipv6", "--ipv6"))
NETWORK_STRINGS = (("driver", "--driver"), ("ipam_driver", "--ipam-driver"))
IMAGE_STRINGS = (
    ("arch", "--arch"), ("auth_file", "--authfile"), ("cert_dir", "--cert-dir"),
    ("creds", "--creds"), ("decryption_key", "--decryption-key"), ("os", "--os"),
    ("variant", "--variant"),
)  # fmt: skip
IMAGE_BOOLS = (("all_tags", "--all-tags"), ("tls_verify", "--tls-verify"))
BUILD_STRINGS = (
    ("arch", "--arch"), ("auth_file", "--authfile"), ("target", "--target"),
    ("variant", "--variant"),
)  # fmt: skip
BUILD_BOOLS = (("tls_verify", "--tls-verify"), ("force_rm", "--force-rm"))
BUILD_LISTS = (
    ("dns", "--dns"), ("dns_option", "--dns-option"), ("dns_search", "--dns-search"),
    ("group_add", "--group-add"), ("image_tag", "--tag"),
)  # fmt: skip
HEALTH = (
    "cmd", "interval", "on_failure", "log_destination", "max_log_count", "max_log_size",
    "retries", "start_period", "timeout", "startup_cmd", "startup_interval",
    "startup_retries", "startup_success", "startup_timeout",
)  # fmt: skip
AUTO_UPDATE_LABEL = "io.containers.autoupdate"
_PORT_RANGE = re.compile(r"\d+(-\d+)?(/udp|/tcp)?$")
_URL = re.compile(r"^((https?)|(git)://)|(github\.com/).+$")


def _fail(unit: QuadletUnit, message: str, hint: str = "") -> QuadletUnitError:
    return QuadletUnitError(f"{unit.path}: {message}", hint=hint)


def base_command(opts: object) -> list[str]:
    """podman with ContainersConfModule= and GlobalArgs=, before the subcommand."""
    args = [PODMAN]
    args += [f"--module={m}" for m in getattr(opts, "containers_conf_module", ())]
    args += getattr(opts, "global_args", ())
    return args


def add_strings(args: list[str], opts: object, table: Iterable[tuple[str, str]]) -> None:
    for name, flag in table:
        value = getattr(opts, name)
        if value:
            args += [flag, value]


def add_lists(args: list[str], opts: object, table: Iterable[tuple[str, str]]) -> None:
    for name, flag in table:
        for value in getattr(opts, name):
            args += [flag, value]


def add_bool(args: list[str], flag: str, value: bool | None) -> None:
    if value is not None:
        args.append(flag if value else f"{flag}=false")


def add_bools(args: list[str], opts: object, table: Iterable[tuple[str, str]]) -> None:
    for name, flag in table:
        add_bool(args, flag, getattr(opts, name))


def add_keyvals(args: list[str], flag: str, words: Iterable[str]) -> None:
    """KEY=VALUE words, the last value of a key winning, sorted by key."""
    pairs: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            pairs[key] = value
    args += [a for key in sorted(pairs) for a in (flag, f"{key}={pairs[key]}")]


def absolute(unit: QuadletUnit, path: str) -> str:
    """*path* against the unit's directory, unless absolute or a specifier (``%h/x``)."""
    if (path.startswith("%") and not path.startswith("%%")) or path.startswith("/"):
        return path
    return os.path.normpath(unit.path.parent / path)


def _storage_source(svc: ServiceBuilder, resolver: Resolver, source: str, *, images: bool) -> str:
    if source.startswith("."):
        source = absolute(svc.unit, source)
    if source.startswith("/"):
        svc.add("Unit", "RequiresMountsFor", source)
    elif is_kind(source, UnitKind.VOLUME) or (images and is_kind(source, UnitKind.IMAGE)):
        source = resolver.reference(svc, source, "source")
    return source


def add_volumes(
    args: list[str], svc: ServiceBuilder, resolver: Resolver, volumes: Iterable[str]
) -> None:
    for volume in volumes:
        parts = volume.split(":", 2)
        source, dest = (parts[0], parts[1]) if len(parts) >= 2 else ("", parts[0])
        options = f":{parts[2]}" if len(parts) == 3 else ""
        if source:
            source = _storage_source(svc, resolver, source, images=False)
        args += ["-v", f"{source}:{dest}{options}" if source else dest]


def _mount(svc: ServiceBuilder, resolver: Resolver, mount: str) -> str:
    try:
        records = list(csv.reader(io.StringIO(mount)))
    except csv.Error as exc:
        raise _fail(svc.unit, f"Mount={mount}: {exc}") from None
    if len(records) != 1:
        raise _fail(svc.unit, f"Mount={mount} is not one line of type=...,source=,...")
    tokens: list[str] = []
    mount_type = None
    for token in records[0]:
        kv = token.split("=")
        if mount_type is None and len(kv) == 2 and kv[0] == "type":
            mount_type = kv[1]
        else:
            tokens.append(token)
    if mount_type is None:
        raise _fail(svc.unit, f"Mount={mount} has no type=", hint="add type=bind, volume, ...")
    if mount_type not in ("volume", "bind", "glob", "image"):
        return mount
    index, source = -1, ""
    for i, token in enumerate(tokens):
        key, eq, value = token.partition("=")
        if key in ("source", "src"):
            if not eq:
                raise _fail(svc.unit, f"Mount={mount}: source has no value")
            index, source = i, value
    if index < 0 or not source:
        raise _fail(svc.unit, f"Mount={mount} has no source=")
    tokens[index] = "source=" + _storage_source(svc, resolver, source, images=True)
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([f"type={mount_type}", *tokens])
    return out.getvalue()


def add_networks(
    args: list[str], svc: ServiceBuilder, resolver: Resolver, networks: Iterable[str]
) -> None:
    for value in networks:
        network = value
        name, colon, extra = network.partition(":")
        container = is_kind(name, UnitKind.CONTAINER)
        if container or is_kind(name, UnitKind.NETWORK):
            resource = resolver.reference(svc, name)
            if not resource:
                raise _fail(svc.unit, f"cannot know the name of what {name} creates")
            if colon and container:
                raise _fail(svc.unit, f"Network={network}: options to join a container's network")
            network = (
                f"{resource}{colon}{extra}"
                if colon
                else ("container:" if container else "") + resource
            )
        args += ["--network", network]


def add_user_mappings(
    args: list[str],
    svc: ServiceBuilder,
    opts: ContainerOptions | PodOptions | KubeOptions,
    *,
    manual: bool,
) -> None:
    defined = False
    if opts.user_ns:
        args += ["--userns", opts.user_ns]
        defined = True
    uid_maps = getattr(opts, "uid_map", ())
    gid_maps = getattr(opts, "gid_map", ())
    args += [a for m in uid_maps for a in ("--uidmap", m)]
    args += [a for m in gid_maps for a in ("--gidmap", m)]
    defined = defined or bool(uid_maps) or bool(gid_maps)
    for name, flag in (("sub_uid_map", "--subuidname"), ("sub_gid_map", "--subgidname")):
        value = getattr(opts, name, None)
        if value:
            args += [flag, value]
            defined = True
    remap_uid, remap_gid = opts.remap_uid, opts.remap_gid
    remap = opts.remap_users
    if defined:
        if remap_uid or remap_gid or remap is not None:
            raise _fail(svc.unit, "the deprecated Remap* keys are set along with UserNS/UIDMap/...")
        return
    if not remap:
        if remap_uid or remap_gid:
            raise _fail(svc.unit, "RemapUid=/RemapGid= need RemapUsers=")
    elif remap == "manual":
        if not manual:
            raise _fail(svc.unit, "RemapUsers=manual is not supported here")
        args += [a for m in remap_uid for a in ("--uidmap", m)]
        args += [a for m in remap_gid for a in ("--gidmap", m)]
    elif remap == "auto":
        auto = [f"uidmapping={m}" for m in remap_uid] + [f"gidmapping={m}" for m in remap_gid]
        size = _uint(opts.remap_uid_size)
        if size:
            auto.append(f"size={size}")
        args += ["--userns", "auto" + (":" + ",".join(auto) if auto else "")]
    elif remap == "keep-id":
        keep = []
        if len(remap_uid) > 1 or len(remap_gid) > 1:
            raise _fail(svc.unit, "RemapUsers=keep-id takes one RemapUid= and one RemapGid=")
        keep += [f"uid={m}" for m in remap_uid] + [f"gid={m}" for m in remap_gid]
        args += ["--userns", "keep-id" + (":" + ",".join(keep) if keep else "")]
    else:
        raise _fail(svc.unit, f"RemapUsers={remap} is not manual, auto or keep-id")


def _uint(value: str | None) -> int:
    """A number as strtol reads it (0x hex, 0 octal); 0 when absent or not one."""
    if not value:
        return 0
    text = value.lstrip("+")
    try:
        if text[:2].lower() == "0x":
            number = int(text[2:], 16)
        elif text.startswith("0") and len(text) > 1:
            number = int(text, 8)
        else:
            number = int(text, 10)
    except ValueError:
        return 0
    return number if 0 <= number <= 0xFFFFFFFF else 0


def _kill_mode(svc: ServiceBuilder) -> None:
    kill_mode = svc.lookup("Service", "KillMode")
    if kill_mode is None:
        svc.set("Service", "KillMode", "mixed")
    elif kill_mode not in ("mixed", "control-group"):
        raise _fail(
            svc.unit, f"KillMode={kill_mode} is not allowed", hint="use mixed or control-group"
        )


def _notify_type(svc: ServiceBuilder) -> str | None:
    service_type = svc.lookup("Service", "Type")
    if service_type not in (None, "notify", "oneshot"):
        raise _fail(svc.unit, f"Type={service_type} is not allowed", hint="use notify or oneshot")
    if service_type != "oneshot":
        svc.set("Service", "Type", "notify")
        svc.set("Service", "NotifyAccess", "all")
    return service_type


def _syslog_identifier(svc: ServiceBuilder) -> None:
    if not any(e.key == "SyslogIdentifier" for e in svc.unit.section("Service")):
        svc.set("Service", "SyslogIdentifier", "%N")


def _image_source(svc: ServiceBuilder, resolver: Resolver, image: str) -> str:
    if is_kind(image, UnitKind.BUILD, UnitKind.IMAGE):
        return resolver.reference(svc, image, "image")
    return image


def container(svc: ServiceBuilder, resolver: Resolver) -> None:
    unit, opts = svc.unit, svc.unit.options
    assert isinstance(opts, ContainerOptions)
    if not opts.image and not opts.rootfs:
        raise _fail(unit, "[Container] has no Image= or Rootfs=", hint="add Image=REFERENCE")
    if opts.image and opts.rootfs:
        raise _fail(unit, "Image= and Rootfs= cannot be used together")
    image = _image_source(svc, resolver, opts.image) if opts.image else ""
    svc.add("Service", "Environment", "PODMAN_SYSTEMD_UNIT=%n")
    _kill_mode(svc)
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    stop = [*base_command(opts), "rm", "-v", "-f", "-i", "--cidfile=%t/%N.cid"]
    svc.add_command("ExecStop", stop)
    svc.add_command("ExecStopPost", ["-" + stop[0], *stop[1:]])
    args = [*base_command(opts), "run", "--name", container_name(unit)]
    args += ["--cidfile=%t/%N.cid", "--replace", "--rm"]
    if opts.log_driver is not None:
        args += ["--log-driver", opts.log_driver]
    args += [a for o in opts.log_opt for a in ("--log-opt", o)]
    svc.add("Service", "Delegate", "yes")
    args += ["--cgroups", opts.cgroups_mode] if opts.cgroups_mode else ["--cgroups=split"]
    add_strings(args, opts, CONTAINER_STRINGS)
    add_lists(args, opts, CONTAINER_LISTS)
    add_bools(args, opts, CONTAINER_BOOLS)
    add_networks(args, svc, resolver, opts.network)
    if _notify_type(svc) != "oneshot":
        notify = opts.notify
        if notify is not None and notify.lower() == "healthy":
            args.append("--sdnotify=healthy")
        elif notify is not None and notify.lower() in ("1", "yes", "true", "on"):
            args.append("--sdnotify=container")
        else:
            args.append("--sdnotify=conmon")
        args.append("-d")
    _syslog_identifier(svc)
    _security(args, opts)
    args += [a for c in opts.drop_capability for a in ("--cap-drop", c.lower())]
    args += [a for c in opts.add_capability for a in ("--cap-add", c.lower())]
    args += [a for s in opts.sysctl for a in ("--sysctl", s)]
    add_bool(args, "--read-only", opts.read_only)
    if opts.volatile_tmp and not opts.read_only:
        args += ["--tmpfs", "/tmp:rw,size=512M,mode=1777"]
    if opts.group and not opts.user:
        raise _fail(unit, "Group= needs User=", hint="add User=")
    if opts.user:
        args += ["--user", f"{opts.user}:{opts.group}" if opts.group else opts.user]
    add_user_mappings(args, svc, opts, manual=True)
    add_volumes(args, svc, resolver, opts.volume)
    if opts.auto_update:
        args += ["--label", f"{AUTO_UPDATE_LABEL}={opts.auto_update}"]
    for port in opts.expose_host_port:
        if not _PORT_RANGE.search(port.strip()):
            raise _fail(unit, f"ExposeHostPort={port} is not PORT[-PORT][/tcp|/udp]")
        args += ["--expose", port.strip()]
    args += [a for p in opts.publish_port for a in ("--publish", p)]
    add_keyvals(args, "--env", opts.environment)
    add_keyvals(args, "--label", opts.label)
    add_keyvals(args, "--annotation", opts.annotation)
    args += [a for m in opts.mask for a in ("--security-opt", f"mask={m}")]
    args += [a for m in opts.unmask for a in ("--security-opt", f"unmask={m}")]
    args += [a for f in opts.environment_file for a in ("--env-file", absolute(unit, f))]
    args += [a for s in opts.secret for a in ("--secret", s)]
    args += [a for m in opts.mount for a in ("--mount", _mount(svc, resolver, m))]
    for name in HEALTH:
        value = getattr(opts, f"health_{name}")
        if value:
            args += [f"--health-{name.replace('_', '-')}", value]
    if opts.pod:
        _join_pod(args, svc, resolver, opts)
    args += opts.podman_args
    args += [image] if image else ["--rootfs", opts.rootfs or ""]
    if opts.exec_ is not None:
        args += split_words(opts.exec_)
    svc.add_command("ExecStart", args)


def _security(args: list[str], opts: ContainerOptions) -> None:
    if opts.no_new_privileges:
        args.append("--security-opt=no-new-privileges")
    if opts.security_label_disable:
        args += ["--security-opt", "label=disable"]
    if opts.security_label_nested:
        args += ["--security-opt", "label=nested"]
    for name, label in (
        ("security_label_type", "type"),
        ("security_label_file_type", "filetype"),
        ("security_label_level", "level"),
    ):
        value = getattr(opts, name)
        if value:
            args += ["--security-opt", f"label={label}:{value}"]
    for value in opts.add_device:
        device = value
        if device.startswith("-"):
            device = device[1:]
            if not os.path.lexists(device.split(":")[0]):
                continue  # an optional device that this machine lacks
        args += ["--device", device]
    if opts.seccomp_profile is not None:
        args += ["--security-opt", f"seccomp={opts.seccomp_profile}"]


def _join_pod(
    args: list[str], svc: ServiceBuilder, resolver: Resolver, opts: ContainerOptions
) -> None:
    pod = opts.pod or ""
    if not is_kind(pod, UnitKind.POD):
        raise _fail(svc.unit, f"Pod={pod} is not a Quadlet .pod unit")
    pod_unit = resolver.unit(svc.unit, pod, "pod")
    pod_service = pod_unit.service_name
    args += ["--pod-id-file", f"%t/{pod_service.removesuffix('.service')}.pod-id"]
    svc.depend(pod_service, bind=True)
    if opts.start_with_pod is not False:
        resolver.pod_members.setdefault(pod, []).append(svc.name)


def oneshot(svc: ServiceBuilder, *, remain: bool) -> None:
    if svc.lookup("Service", "SyslogIdentifier") is None:
        svc.set("Service", "SyslogIdentifier", "%N")
    if svc.lookup("Service", "Type") is None:
        svc.set("Service", "Type", "oneshot")
    if remain and svc.lookup("Service", "RemainAfterExit") is None:
        svc.set("Service", "RemainAfterExit", "yes")


def network(svc: ServiceBuilder, resolver: Resolver) -> None:
    opts = svc.unit.options
    assert isinstance(opts, NetworkOptions)
    name = opts.network_name or f"systemd-{svc.unit.stem}"
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    args = [*base_command(opts), "network", "create", "--ignore"]
    add_bools(args, opts, NETWORK_BOOLS)
    add_strings(args, opts, NETWORK_STRINGS)
    args += [a for d in opts.dns for a in ("--dns", d)]
    subnets, gateways, ranges = opts.subnet, opts.gateway, opts.ip_range
    if subnets:
        if len(gateways) > len(subnets) or len(ranges) > len(subnets):
            raise _fail(svc.unit, "more Gateway= or IPRange= than Subnet= lines")
        for i, subnet in enumerate(subnets):
            args += ["--subnet", subnet]
            if i < len(gateways):
                args += ["--gateway", gateways[i]]
            if i < len(ranges):
                args += ["--ip-range", ranges[i]]
    elif gateways or ranges:
        raise _fail(svc.unit, "Gateway= or IPRange= without Subnet=")
    add_keyvals(args, "--opt", opts.options)
    add_keyvals(args, "--label", opts.label)
    args += [*opts.podman_args, name]
    svc.add_command("ExecStart", args)
    oneshot(svc, remain=True)


def volume(svc: ServiceBuilder, resolver: Resolver) -> None:
    opts = svc.unit.options
    assert isinstance(opts, VolumeOptions)
    name = opts.volume_name or f"systemd-{svc.unit.stem}"
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    args = [*base_command(opts), "volume", "create", "--ignore"]
    if opts.driver is not None:
        args += ["--driver", opts.driver]
    mount: list[str] = []
    if opts.driver == "image":
        if opts.image is None:
            raise _fail(svc.unit, "Driver=image needs Image=")
        prefix = "image=" + _image_source(svc, resolver, opts.image)
    else:
        prefix = "o="
        if opts.user is not None:
            mount.append(f"uid={_uint(opts.user)}")
        if opts.group is not None:
            mount.append(f"gid={_uint(opts.group)}")
        if opts.copy is not None:
            args += ["--opt", "copy" if opts.copy else "nocopy"]
        if opts.device:
            args += ["--opt", f"device={opts.device}"]
        if opts.type:
            if not opts.device:
                raise _fail(svc.unit, "Type= needs Device=")
            args += ["--opt", f"type={opts.type}"]
        if opts.options:
            if not opts.device:
                raise _fail(svc.unit, "Options= needs Device=")
            mount.append(opts.options)
    value = prefix + ",".join(mount)
    if len(value) > 2:
        args += ["--opt", value]
    add_keyvals(args, "--label", opts.label)
    args += [*opts.podman_args, name]
    svc.add_command("ExecStart", args)
    oneshot(svc, remain=True)


def image(svc: ServiceBuilder, resolver: Resolver) -> None:
    opts = svc.unit.options
    assert isinstance(opts, ImageOptions)
    if not opts.image:
        raise _fail(svc.unit, "[Image] has no Image=", hint="add Image=REFERENCE")
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    args = [*base_command(opts), "image", "pull"]
    add_strings(args, opts, IMAGE_STRINGS)
    add_bools(args, opts, IMAGE_BOOLS)
    args += [*opts.podman_args, opts.image]
    svc.add_command("ExecStart", args)
    oneshot(svc, remain=True)


def pod(svc: ServiceBuilder, resolver: Resolver) -> None:
    opts = svc.unit.options
    assert isinstance(opts, PodOptions)
    name = opts.pod_name or f"systemd-{svc.unit.stem}"
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    for member in resolver.pod_members.get(svc.unit.name, ()):
        svc.add("Unit", "Wants", member)
        svc.add("Unit", "Before", member)
    _syslog_identifier(svc)
    base = base_command(opts)
    pid_file = "--pod-id-file=%t/%N.pod-id"
    svc.add_command("ExecStart", [*base, "pod", "start", pid_file])
    svc.add_command("ExecStop", [*base, "pod", "stop", pid_file, "--ignore", "--time=10"])
    svc.add_command("ExecStopPost", [*base, "pod", "rm", pid_file, "--ignore", "--force"])
    args = [*base, "pod", "create", "--infra-conmon-pidfile=%t/%N.pid", pid_file]
    args += ["--exit-policy=stop", "--replace"]
    add_user_mappings(args, svc, opts, manual=True)
    args += [a for p in opts.publish_port for a in ("--publish", p)]
    add_networks(args, svc, resolver, opts.network)
    add_strings(args, opts, POD_STRINGS)
    add_lists(args, opts, POD_LISTS)
    add_volumes(args, svc, resolver, opts.volume)
    args += ["--infra-name", f"{name}-infra", "--name", name, *opts.podman_args]
    svc.add_command("ExecStartPre", args)
    for key, value in (
        ("Environment", "PODMAN_SYSTEMD_UNIT=%n"),
        ("Type", "forking"),
        ("Restart", "on-failure"),
        ("PIDFile", "%t/%N.pid"),
    ):
        svc.set("Service", key, value)


def _working_directory(svc: ServiceBuilder, kind: UnitKind) -> str:
    """SetWorkingDirectory=: sets the service's WorkingDirectory=; returns a build context."""
    unit, opts = svc.unit, svc.unit.options
    assert isinstance(opts, KubeOptions | BuildOptions)
    value = opts.set_working_directory
    if not value:
        return ""
    relative_to, context = "", ""
    lowered = value.lower()
    if lowered == "yaml":
        if not isinstance(opts, KubeOptions):
            raise _fail(unit, "SetWorkingDirectory=yaml is only for .kube units")
        if opts.yaml is None:
            raise _fail(unit, "SetWorkingDirectory=yaml needs Yaml=")
        relative_to = opts.yaml
    elif lowered == "file":
        if not isinstance(opts, BuildOptions):
            raise _fail(unit, "SetWorkingDirectory=file is only for .build units")
        if opts.file is None:
            raise _fail(unit, "SetWorkingDirectory=file needs File=")
        relative_to = opts.file
    elif lowered == "unit":
        relative_to = str(unit.path)
    else:
        if kind is not UnitKind.BUILD:
            raise _fail(unit, f"SetWorkingDirectory={value} is not yaml or unit")
        context = value
        if not value.startswith("/"):
            relative_to = str(unit.path)
    if relative_to and not _URL.search(context):
        if svc.lookup("Service", "WorkingDirectory"):
            return ""
        svc.add("Service", "WorkingDirectory", str(Path(absolute(unit, relative_to)).parent))
    return context


def kube(svc: ServiceBuilder, resolver: Resolver) -> None:
    unit, opts = svc.unit, svc.unit.options
    assert isinstance(opts, KubeOptions)
    if not opts.yaml:
        raise _fail(unit, "[Kube] has no Yaml=", hint="add Yaml=FILE")
    yaml = absolute(unit, opts.yaml)
    _kill_mode(svc)
    svc.add("Service", "Environment", "PODMAN_SYSTEMD_UNIT=%n")
    svc.add("Unit", "RequiresMountsFor", "%t/containers")
    _notify_type(svc)
    _syslog_identifier(svc)
    args = [*base_command(opts), "kube", "play", "--replace", "--service-container=true"]
    if opts.exit_code_propagation:
        args.append(f"--service-exit-code-propagation={opts.exit_code_propagation}")
    if opts.log_driver is not None:
        args += ["--log-driver", opts.log_driver]
    args += [a for o in opts.log_opt for a in ("--log-opt", o)]
    add_user_mappings(args, svc, opts, manual=False)
    add_networks(args, svc, resolver, opts.network)
    for update in opts.auto_update:
        container, slash, policy = update.partition("/")
        label = f"{AUTO_UPDATE_LABEL}/{container}" if slash else AUTO_UPDATE_LABEL
        args.append(f"--annotation={label}={policy if slash else update}")
    args += [a for c in opts.config_map for a in ("--configmap", absolute(unit, c))]
    args += [a for p in opts.publish_port for a in ("--publish", p)]
    args += [*opts.podman_args, yaml]
    svc.add_command("ExecStart", args)
    down = [*base_command(opts), "kube", "down"]
    add_bool(down, "--force", opts.kube_down_force)
    svc.add_command("ExecStopPost", [*down, yaml])
    _working_directory(svc, UnitKind.KUBE)


def build(svc: ServiceBuilder, resolver: Resolver) -> None:
    unit, opts = svc.unit, svc.unit.options
    assert isinstance(opts, BuildOptions)
    if not opts.image_tag:
        raise _fail(unit, "[Build] has no ImageTag=", hint="add ImageTag=NAME")
    args = [*base_command(opts), "build"]
    if opts.pull:
        args.append(f"--pull={opts.pull}")
    add_strings(args, opts, BUILD_STRINGS)
    add_bools(args, opts, BUILD_BOOLS)
    add_lists(args, opts, BUILD_LISTS)
    add_keyvals(args, "--annotation", opts.annotation)
    add_keyvals(args, "--env", opts.environment)
    add_keyvals(args, "--label", opts.label)
    add_networks(args, svc, resolver, opts.network)
    args += [a for s in opts.secret for a in ("--secret", s)]
    add_volumes(args, svc, resolver, opts.volume)
    context = _working_directory(svc, UnitKind.BUILD)
    workdir = svc.lookup("Service", "WorkingDirectory") or ""
    file = opts.file or ""
    if not workdir and not file and not context:
        raise _fail(unit, "[Build] needs SetWorkingDirectory= or File=")
    if file:
        args += ["--file", file]
    args += opts.podman_args
    if context:
        args.append(context)
    elif not file.startswith("/") and not _URL.search(file):
        if not workdir:
            raise _fail(unit, f"File={file} is relative: it needs SetWorkingDirectory=")
        args.append(workdir)
    svc.add_command("ExecStart", args)
    oneshot(svc, remain=False)


CONVERTERS = {
    UnitKind.CONTAINER: container,
    UnitKind.POD: pod,
    UnitKind.VOLUME: volume,
    UnitKind.NETWORK: network,
    UnitKind.IMAGE: image,
    UnitKind.KUBE: kube,
    UnitKind.BUILD: build,
}
