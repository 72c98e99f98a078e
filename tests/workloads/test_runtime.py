"""From Quadlet units to the commands the supervisor runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.workloads.supervise import runtime
from atoll.workloads.supervise.runtime import (
    UNIT_LABEL,
    NotifyMode,
    UnitPlan,
    expand_specifiers,
    fit_to_podman,
    logs_argv,
    plan_unit,
    replaces_in_place,
)
from atoll.workloads.unitfiles.generate import generate_services
from atoll.workloads.unitfiles.quadlet import load_units


def _plans(tmp_path: Path, files: dict[str, str]) -> dict[str, UnitPlan]:
    units_dir = tmp_path / "units"
    units_dir.mkdir()
    for name, text in files.items():
        (units_dir / name).write_text(text)
    loaded = load_units([units_dir])
    services = {s.name: s for s in generate_services(loaded)}
    run_dir = tmp_path / "state" / "run"
    return {u.name: plan_unit(u, services[u.service_name], run_dir) for u in loaded.units}


def test_expand_specifiers(tmp_path: Path) -> None:
    assert expand_specifiers("%t/%N.cid", "web.service", tmp_path) == f"{tmp_path}/web.cid"
    assert expand_specifiers("PODMAN_SYSTEMD_UNIT=%n", "web.service", tmp_path).endswith(
        "=web.service"
    )
    assert expand_specifiers("100%% %Q", "web.service", tmp_path) == "100% %Q"


def test_container_run_line(tmp_path: Path) -> None:
    plans = _plans(
        tmp_path,
        {
            "web.container": "[Container]\nImage=example.org/web:1\nPublishPort=8080:80\n"
            "HealthCmd=true\nHealthOnFailure=kill\nNotify=healthy\n"
            "HealthStartupCmd=test -e /up\nHealthStartupRetries=2\n"
            "[Service]\nRestart=always\nRestartSec=2\n",
        },
    )
    plan = plans["web.container"]
    argv = plan.start[0].argv
    assert argv[:4] == ("/usr/bin/podman", "run", "--label", f"{UNIT_LABEL}=web.container")
    assert "--cgroups=split" not in argv
    assert "--health-on-failure" not in argv
    # atoll runs the start-up check itself: neither the options nor their values stay.
    assert not {"--health-startup-cmd", "test -e /up", "--health-startup-retries"} & set(argv)
    assert plan.health is not None and plan.health.startup is not None
    assert plan.health.startup.argv == ("/bin/sh", "-c", "test -e /up")
    assert "--sdnotify=conmon" in argv
    assert "--sdnotify=healthy" not in argv
    assert f"--cidfile={tmp_path}/state/run/web.cid" in argv
    assert argv[-1] == "example.org/web:1"
    assert plan.container == "systemd-web"
    assert plan.notify is NotifyMode.HEALTHY
    assert plan.health is not None and plan.health.on_failure == "kill"
    assert plan.settings.restart == "always" and plan.settings.restart_sec == 2
    assert plan.env["PODMAN_SYSTEMD_UNIT"] == "web.service"
    stop = plan.stop[0].argv
    assert stop[:5] == ("/usr/bin/podman", "rm", "-v", "-f", "-i")
    assert plan.stop_post[0].ignore_failure


def test_dependencies_and_oneshots(tmp_path: Path) -> None:
    plans = _plans(
        tmp_path,
        {
            "app.pod": "[Pod]\n",
            "data.volume": "[Volume]\n",
            "db.container": "[Unit]\nRequires=cache.service\nAfter=cache.service\n"
            "[Container]\nImage=db\nPod=app.pod\nVolume=data.volume:/data\nNotify=true\n",
        },
    )
    db = plans["db.container"]
    assert {"app-pod.service", "data-volume.service", "cache.service"} <= set(db.requires)
    assert {"app-pod.service", "data-volume.service", "cache.service"} <= set(db.after)
    assert db.notify is NotifyMode.CONTAINER
    pod = plans["app.pod"]
    assert pod.service_type == "forking"
    assert "db.service" in pod.wants and "db.service" in pod.before
    assert pod.start_pre[0].argv[1:3] == ("pod", "create")
    volume = plans["data.volume"]
    assert volume.service_type == "oneshot"
    assert volume.remain_after_exit and not volume.exits  # RemainAfterExit=yes: stays active
    assert volume.start[0].argv[-1] == "systemd-data"
    # podman 4.3 has no --ignore: an existing volume counts as success instead.
    assert "--ignore" not in volume.start[0].argv
    assert volume.start[0].succeeded(125, b"Error: volume with name systemd-data already exists")
    assert not volume.start[0].succeeded(125, b"Error: no space left on device")


def test_kube_and_build_plans(tmp_path: Path) -> None:
    plans = _plans(
        tmp_path,
        {
            "app.kube": "[Kube]\nYaml=app.yaml\nSetWorkingDirectory=yaml\n",
            "img.build": "[Build]\nImageTag=localhost/img\nFile=/srv/ctx/Containerfile\n"
            "SetWorkingDirectory=file\n",
        },
    )
    kube = plans["app.kube"]
    assert kube.start[0].argv[1:5] == ("kube", "play", "--replace", "--service-container=true")
    assert kube.working_directory == tmp_path / "units"
    assert kube.env["PODMAN_SYSTEMD_UNIT"] == "app.service"
    build = plans["img.build"]
    assert build.service == "img-build.service" and build.service_type == "oneshot"
    assert build.exits  # as podman 5.4's quadlet writes it: no RemainAfterExit=
    assert build.working_directory == Path("/srv/ctx")


def test_options_an_older_podman_lacks_are_dropped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    known = {("run",): {"--name"}, ("kube", "down"): set()}
    monkeypatch.setattr(runtime, "_known_flags", lambda _podman, sub: known[sub])
    argv = ["podman", "--log-level", "info", "run", "--name", "x",
            "--health-log-destination", "/tmp/h", "--health-max-log-count=3", "img"]  # fmt: skip
    assert fit_to_podman(argv, what="web.service") == (
        "podman", "--log-level", "info", "run", "--name", "x", "img"
    )  # fmt: skip
    assert "HealthLogDestination= is not honoured" in caplog.text
    assert "HealthMaxLogCount= is not honoured" in caplog.text
    caplog.clear()
    down = ["podman", "kube", "down", "--force=false", "a.yaml"]
    assert fit_to_podman(down, what="app.service") == ("podman", "kube", "down", "a.yaml")
    assert not caplog.text  # podman's default: nothing is lost
    forced = fit_to_podman(["podman", "kube", "down", "--force", "a.yaml"], what="app.service")
    assert forced == ("podman", "kube", "down", "a.yaml")
    assert "KubeDownForce= is not honoured" in caplog.text
    known[("run",)].add("--health-log-destination")
    kept = ["podman", "run", "--health-log-destination", "/tmp/h", "img"]
    assert fit_to_podman(kept, what="web.service") == tuple(kept)


def test_logs_argv() -> None:
    assert logs_argv("c") == ["podman", "logs", "c"]
    argv = logs_argv("c", follow=True, lines=5)
    assert argv == ["podman", "logs", "--follow", "--tail", "5", "c"]


def test_a_restart_replaces_in_place_only_where_quadlet_stops_the_container(
    tmp_path: Path,
) -> None:
    plans = _plans(
        tmp_path,
        {
            "web.container": "[Container]\nImage=docker.io/library/busybox\n",
            "own.container": (
                "[Container]\nImage=docker.io/library/busybox\n"
                "[Service]\nExecStop=/usr/bin/podman exec systemd-own /bin/drain\n"
            ),
            "data.volume": "[Volume]\n",
        },
    )
    assert replaces_in_place(plans["web.container"])
    assert not replaces_in_place(plans["own.container"])  # its own stop runs first
    assert not replaces_in_place(plans["data.volume"])
