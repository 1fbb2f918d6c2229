"""The deployment files in deploy/: the Kubernetes manifests validate against the Kubernetes schemas
(kubernetes-validate's bundled ones, strict: no unknown fields) and say what docs/deploy.md says they
do; the Nomad jobs parse as HCL with their required fields; the agent's command lines parse with the
agent's own argument parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import hcl2
import kubernetes_validate
import pytest
import yaml

from wrenn.agent.__main__ import parse_args

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: The oldest Kubernetes the manifests are written for.
KUBERNETES = "1.29.0"


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _agent_argv(script: str, **values: str) -> list[str]:
    """The `wrenn agent ...` arguments of a start script's `exec` line, its variables filled in."""
    line = re.search(r"exec \S*wrenn agent (.*?)(?:\n\S|\Z)", script.replace("\\\n", " "), re.S)
    assert line is not None, script
    text = line.group(1)
    for name, value in values.items():
        text = text.replace(name, value)
    return shlex.split(text)


def test_every_kubernetes_manifest_is_valid() -> None:
    manifests = _manifests()
    assert {kind for kind, _ in manifests} >= {"Namespace", "Secret", "Deployment", "Service", "DaemonSet"}
    for (kind, name), doc in manifests.items():
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_a_broken_manifest_is_caught() -> None:
    """The validation can fail: a misspelt field and a wrong type are refused."""
    daemonset = _manifests()[("DaemonSet", "wrenn-agent")]
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES, strict=True)
    deployment = _manifests()[("Deployment", "wrenn-controlplane")]
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_kubernetes_manifests_do_what_the_docs_say() -> None:
    manifests = _manifests()
    deployment = manifests[("Deployment", "wrenn-controlplane")]
    service = manifests[("Service", "wrenn-controlplane")]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "wrenn-database"}} in server["envFrom"]  # PostgreSQL referenced
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert not any(kind == "StatefulSet" for kind, _ in manifests)  # ... and not bundled

    daemonset = manifests[("DaemonSet", "wrenn-agent")]
    pod = daemonset["spec"]["template"]["spec"]
    assert daemonset["spec"]["updateStrategy"]["type"] == "OnDelete"  # drain first: VMs die with the pod
    assert pod["hostNetwork"] is True
    [agent] = pod["containers"]
    assert agent["securityContext"]["privileged"] is True
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: host_paths.get(m["name"]) for m in agent["volumeMounts"]}
    assert mounts["/dev/kvm"] == "/dev/kvm" and mounts["/dev/net/tun"] == "/dev/net/tun"
    assert mounts["/var/lib/wrenn"] == "/var/lib/wrenn"
    config = parse_args(_agent_argv(agent["args"][0], **{"${token:-spent}": "t", "$WRENN_CONTROL_PLANE":
                                    "http://cp", "$NODE_IP": "10.0.0.5"}))  # fmt: skip
    assert str(config.data_dir) == "/var/lib/wrenn" and config.register_token == "t"
    assert config.address == "10.0.0.5:50051"


def _nomad(name: str) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
    )
    with open(DEPLOY / "nomad" / name) as f:
        parsed: dict[str, Any] = hcl2.load(f, serialization_options=options)
    [job] = parsed["job"]
    return job


def test_the_nomad_jobs_parse_with_their_required_fields() -> None:
    [(name, controlplane)] = _nomad("controlplane.nomad.hcl").items()
    assert name == "wrenn-controlplane" and controlplane["type"] == "service"
    [group] = controlplane["group"]
    [(_, group)] = group.items()
    assert group["count"] >= 2
    [task] = group["task"]
    [(_, task)] = task.items()
    assert task["driver"] == "docker" and task["config"][0]["image"]
    assert "DATABASE_URL" in task["template"][0]["data"]

    [(name, agent_job)] = _nomad("agent.nomad.hcl").items()
    assert name == "wrenn-agent" and agent_job["type"] == "system"
    assert agent_job["constraint"][0]["attribute"] == "${meta.wrenn_kvm}"
    [group] = agent_job["group"]
    [(_, group)] = group.items()
    tasks = {n: t for entry in group["task"] for n, t in entry.items()}
    assert set(tasks) == {"image", "agent"} and all(t["driver"] == "raw_exec" for t in tasks.values())
    assert all(t["config"][0]["command"] for t in tasks.values())
    script = next(t["data"] for t in tasks["agent"]["template"] if t["destination"] == "local/start.sh")
    script = script.encode().decode("unicode_escape")  # python-hcl2 gives a heredoc as an escaped string
    argv = _agent_argv(script, **{"$${token:-spent}": "t", '{{ env "attr.unique.network.ip-address" }}':
                                  "10.0.0.5"})  # fmt: skip
    config = parse_args(argv)
    assert config.address == "10.0.0.5:50051" and str(config.data_dir) == "/var/lib/wrenn"
