"""deploy/kubernetes is right by construction: no cluster runs here, so every manifest and both
renderings are validated against Kubernetes' own schemas, and the containers' commands are run
for real against the local PostgreSQL with the environment the manifests give them."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
sys.path.insert(0, str(DEPLOY))

import render  # noqa: E402
from test_compose import _free_port, _get_json  # noqa: E402

KUBERNETES_VERSION = "1.31"  # the oldest Kubernetes release still in upstream support when written
PASSWORD = "s3cretFromTheSecret"
IN_CLUSTER_URL = f"postgresql+psycopg://hpo:{PASSWORD}@hpo-postgres:5432/hpo"
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def manifest_files() -> list[Path]:
    return sorted(p for p in (DEPLOY / "base").glob("*.yaml") if p.name != "kustomization.yaml")


def objects(folder: str = "base") -> dict[str, dict[str, Any]]:
    """The rendered objects of a kustomization, keyed kind/name."""
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in render.render(DEPLOY / folder)}


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container_env(container: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secrets resolved, $(VAR) of earlier variables expanded."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[var["name"]] = expand(var["value"], env)
    return env


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variable expansion: $(VAR) when VAR is defined, $$ is a literal $, else left as is."""
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def local_argv(command: list[str], env: dict[str, str]) -> list[str]:
    """The container's command, expanded, run with this checkout's interpreter."""
    argv = [expand(arg, env) for arg in command]
    if argv[0] == "hpo":
        return [sys.executable, "-m", "hpo", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


SECRETS = {("hpo-postgres", "password"): PASSWORD}


def test_every_manifest_and_both_renderings_pass_strict_schema_validation(tmp_path: Path) -> None:
    files = manifest_files()
    for folder in ("base", "overlays/example"):
        rendered = tmp_path / f"{folder.replace('/', '-')}.yaml"
        rendered.write_text(yaml.safe_dump_all(render.render(DEPLOY / folder)))
        files.append(rendered)
    result = _validate(files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == sum(len(render.load(f)) for f in files)

    job = yaml.safe_load((DEPLOY / "base" / "workers.yaml").read_text())
    job["spec"]["parralelism"] = job["spec"].pop("parallelism")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(job))
    assert _validate([tmp_path / "typo.yaml"]).returncode != 0, "strict validation rejects an unknown field"


def _validate(files: list[Path]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION]
    return subprocess.run([*argv, *map(str, files)], capture_output=True, text=True, timeout=120)


def test_overlay_sets_namespace_image_workers_and_trials_and_leaves_the_base_alone() -> None:
    base, example = objects(), objects("overlays/example")
    assert (
        set(base)
        == set(example)
        == {
            "Service/hpo-postgres",
            "StatefulSet/hpo-postgres",
            "PersistentVolumeClaim/hpo-mnist",
            "Job/hpo-mnist",
            "Job/hpo-workers",
            "Service/hpo-dashboard",
            "Deployment/hpo-dashboard",
        }
    )
    assert {o["metadata"].get("namespace") for o in example.values()} == {"hpo"}
    assert all("namespace" not in o["metadata"] for o in base.values())
    images = {c["name"]: c["image"] for o in example.values() for c in render.containers([o])}
    assert images.pop("postgres") == "postgres:16-alpine"
    assert set(images.values()) == {"registry.example.com/hpo:0.1.0"}
    assert {c["image"] for o in base.values() for c in render.containers([o])} == {"postgres:16-alpine", "hpo:latest"}

    workers = example["Job/hpo-workers"]
    assert workers["spec"]["parallelism"] == 8 and base["Job/hpo-workers"]["spec"]["parallelism"] == 4
    env = container_env(pod(workers)["containers"][0], SECRETS)
    assert env["TRIALS"] == "500" and env["HPO_THREADS"] == "1", "the patch changes TRIALS and keeps the rest"
    assert pod(workers)["initContainers"][0]["name"] == "wait-for-mnist"
    for obj in example.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hpo"
        if "template" in obj.get("spec", {}):
            assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "hpo-example"


def test_workers_are_a_job_of_one_cpu_pods_that_wait_for_the_database_and_stop_cleanly() -> None:
    workers = objects()["Job/hpo-workers"]
    spec, template = workers["spec"], pod(workers)
    assert "completions" not in spec, "a work queue: the study, not the Job, counts trials"
    assert template["restartPolicy"] == "OnFailure"
    assert template["terminationGracePeriodSeconds"] > 30, "the SIGTERM path (fail, queue retry) needs well under 30 s"
    (worker,) = template["containers"]
    assert worker["command"] == ["hpo", "optimize", "--trials", "$(TRIALS)"]
    env = container_env(worker, SECRETS)
    assert env["HPO_STORAGE"] == IN_CLUSTER_URL
    assert env["HPO_DATA_DIR"] == "/data" and env["HPO_JOBS"] == "1" and float(env["HPO_CONNECT_TIMEOUT"]) >= 60
    resources = worker["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == env["HPO_THREADS"] == "1"
    mounts = [m for c in template["initContainers"] + template["containers"] for m in c["volumeMounts"]]
    assert all(m["mountPath"] == "/data" and m["readOnly"] for m in mounts), "workers never download MNIST"
    mnist = objects()["Job/hpo-mnist"]
    claim = {v["persistentVolumeClaim"]["claimName"] for v in template["volumes"] + pod(mnist)["volumes"]}
    assert claim == {"hpo-mnist"}


def test_every_pod_runs_as_non_root_with_limits_and_probes_and_nothing_is_exposed() -> None:
    found = objects()
    for name, obj in found.items():
        if obj["kind"] == "Service":
            assert obj["spec"]["type"] == "ClusterIP", f"{name} is reached with kubectl port-forward only"
        if "template" not in obj.get("spec", {}):
            continue
        security = pod(obj)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
        for container in render.containers([obj]):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{name}/{container['name']} {kind}"
            if container["image"] == "hpo:latest":
                assert security["runAsUser"] == 1000, "the image's user hpo"
    postgres = pod(found["StatefulSet/hpo-postgres"])["containers"][0]
    assert postgres["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert found["StatefulSet/hpo-postgres"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    dashboard = pod(found["Deployment/hpo-dashboard"])["containers"][0]
    assert dashboard["readinessProbe"]["httpGet"]["path"] == "/"
    assert not any(o["kind"] in ("Ingress", "Secret") for o in found.values())


def test_no_password_is_written_under_deploy() -> None:
    for path in DEPLOY.rglob("*"):
        if not path.is_file() or path.suffix not in (".yaml", ".yml", ".py", ".md"):
            continue
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            assert not re.search(r"password\s*[:=]\s*['\"]?[^\s'\"$]", line, re.IGNORECASE) or "secretKeyRef" in line, (
                f"{path}: {line}"
            )
            for url in re.findall(r"\w+(?:\+\w+)?://[^\s\"']+", line):
                credentials = url.split("://", 1)[1].split("@")[0] if "@" in url else ""
                assert ":" not in credentials or credentials.split(":", 1)[1] == "$(POSTGRES_PASSWORD)", (
                    f"{path}: {url}"
                )
    for obj in objects().values():
        for container in render.containers([obj]):
            for var in container.get("env", []):
                if "PASSWORD" in var["name"]:
                    assert var["valueFrom"]["secretKeyRef"] == {"name": "hpo-postgres", "key": "password"}


def test_mnist_job_and_the_workers_wait_for_it_run(mnist_dir: Path) -> None:
    found = objects()
    jobs = [pod(found["Job/hpo-mnist"])["containers"][0], pod(found["Job/hpo-workers"])["initContainers"][0]]
    for container in jobs:
        env = {**container_env(container, SECRETS), "HPO_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            local_argv(container["command"], env),
            cwd=ROOT,
            env={**_base_env(), **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{container['name']}: {result.stderr}"


@pytest.mark.postgres
def test_postgres_readiness_probe_answers_for_a_running_server(postgres_server) -> None:
    if shutil.which("pg_isready") is None:
        pytest.skip("pg_isready is not installed")
    probe = pod(objects()["StatefulSet/hpo-postgres"])["containers"][0]["readinessProbe"]["exec"]["command"]
    argv = [
        *probe[: probe.index("-h") + 1],
        postgres_server.host or "127.0.0.1",
        "-p",
        str(postgres_server.port or 5432),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.postgres
def test_two_workers_run_the_job_command_and_the_dashboard_serves_their_study(
    write_spec, postgres_url, mnist_dir
) -> None:
    found = objects()
    worker = pod(found["Job/hpo-workers"])["containers"][0]
    env = container_env(worker, SECRETS)
    assert env["HPO_STORAGE"] == IN_CLUSTER_URL
    env.update(
        TRIALS="4",
        HPO_SPEC=str(write_spec(epochs=2)),
        HPO_STORAGE=postgres_url,
        HPO_DATA_DIR=str(mnist_dir),
        PYTHONPATH=str(ROOT),
    )
    procs = [
        subprocess.Popen(
            local_argv(worker["command"], env),
            cwd=ROOT,
            env={**_base_env(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    trials = optuna.load_study(study_name="small", storage=postgres_url).get_trials()
    assert 4 <= sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) <= 5
    assert not any(t.state == TrialState.RUNNING for t in trials)

    dashboard = pod(found["Deployment/hpo-dashboard"])["containers"][0]
    env = container_env(dashboard, SECRETS)
    argv = local_argv(dashboard["command"], env)
    assert argv[1] == IN_CLUSTER_URL and argv[argv.index("--port") + 1] == str(dashboard["ports"][0]["containerPort"])
    port = str(_free_port())  # the manifest's 8080 may be taken on this machine
    argv[1], argv[argv.index("--port") + 1] = postgres_url, port
    server = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**_base_env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", server)
        connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        connection.request("GET", dashboard["readinessProbe"]["httpGet"]["path"])
        status = connection.getresponse().status  # not following redirects, as the kubelet counts
    finally:
        server.terminate()
        server.communicate(timeout=30)
    (summary,) = studies["study_summaries"]
    assert summary["study_name"] == "small"
    assert 200 <= status < 400, "the readiness probe's path answers with what the kubelet counts as ready"


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
