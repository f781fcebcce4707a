"""deploy/: the Azure launcher config passes Ray's own validation, the KubeRay manifests name what `run`
and Ray need, and every image and node installs the same pinned versions as `make install`."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera_pipeline import __version__
from tessera_pipeline.run.config import build_config, merge
from tessera_pipeline.run.policy import CLASS_LABEL, CLASS_RESOURCE_PREFIX, builtin_policy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
AZURE_CONFIGS = sorted((DEPLOY / "azure").glob("*.yaml"))
CPU_CLASSES = {"cpu-amx", "cpu-avx512bf16", "cpu-avx512", "cpu-x86_64"}


def _makefile_torch_version() -> str:
    """The torch version `make install` pins (TORCH_SPEC ?= torch==X)."""
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile has no TORCH_SPEC ?= torch==X"
    return match.group(1)


def _is_class(name: str) -> bool:
    return name in CPU_CLASSES or re.fullmatch(r"cuda-[A-Za-z0-9-]+", name) is not None


def _node_class(node: dict[str, Any]) -> str | None:
    """The class a node type declares through the `tessera_class:` resource."""
    names = [r[len(CLASS_RESOURCE_PREFIX):] for r in node.get("resources", {}) if r.startswith(CLASS_RESOURCE_PREFIX)]
    assert len(names) <= 1, names
    return names[0] if names else None


@pytest.mark.parametrize("path", AZURE_CONFIGS, ids=lambda p: p.name)
def test_azure_launcher_config_passes_rays_validation(path: Path) -> None:
    """`prepare_config` then `validate_config`, as `ray up` does (offline: Azure's defaults only)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "azure"
    for key in ("subscription_id", "msi", "ssh_private_key"):
        assert key not in raw["provider"] and key not in raw.get("auth", {}), f"{key} must come from identity, not the config"


@pytest.mark.parametrize("path", AZURE_CONFIGS, ids=lambda p: p.name)
def test_azure_node_types_carry_the_routing_contract(path: Path) -> None:
    """Workers declare their class as resource and label; GPUs add GPU and accelerator_type; sizes make sense."""
    config = yaml.safe_load(path.read_text())
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["max_workers"] == 0
    sizes = {name: n["node_config"]["azure_arm_parameters"]["vmSize"] for name, n in nodes.items()}
    assert {"Standard_D16s_v6", "Standard_NC8as_T4_v3"} <= set(sizes.values())
    classes = {}
    for name, node in nodes.items():
        if name == config["head_node_type"]:
            continue
        hw_class = _node_class(node)
        assert hw_class and _is_class(hw_class), name
        assert node["labels"][CLASS_LABEL] == hw_class
        assert node["resources"][CLASS_RESOURCE_PREFIX + hw_class] == 1
        assert 0 <= node["min_workers"] <= node["max_workers"]
        assert node["resources"]["memory"] > 8 * 2**30
        assert any("setup-node.sh" in c for c in node["worker_setup_commands"])
        if hw_class.startswith("cuda-"):
            assert node["resources"]["GPU"] == 1
            assert node["resources"]["accelerator_type:" + hw_class[len("cuda-"):]] == 1
            assert node["worker_setup_commands"][-1].endswith("setup-node.sh cuda")
        else:
            assert node["resources"]["CPU"] >= 2 * builtin_policy(hw_class).cores_per_actor
            assert node["worker_setup_commands"][-1].endswith("setup-node.sh cpu")
        classes[sizes[name]] = hw_class
    assert classes["Standard_D16s_v6"] == "cpu-amx" and classes["Standard_NC8as_T4_v3"] == "cuda-T4"
    amx = next(n for n in nodes.values() if n["node_config"]["azure_arm_parameters"]["vmSize"] == "Standard_D16s_v6")
    assert amx["node_config"]["azure_arm_parameters"]["priority"] == "Spot"
    # Weeks-long runs: idle nodes above min_workers go, but not at the first pause.
    assert 5 <= config["idle_timeout_minutes"] <= 60


@pytest.mark.parametrize("path", AZURE_CONFIGS, ids=lambda p: p.name)
def test_azure_auth_on_and_dashboard_private(path: Path) -> None:
    """Every ray start runs with RAY_AUTH_MODE=token and a token file; the dashboard binds to localhost."""
    config = yaml.safe_load(path.read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=" in command
    head = next(c for c in config["head_start_ray_commands"] if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in json.dumps(config)


def test_azure_setup_installs_the_pinned_versions_and_reads_the_token_from_identity() -> None:
    """setup-node.sh pins the Makefile's torch and the deploy Ray version; the token comes from Key Vault via IMDS."""
    script = (DEPLOY / "azure" / "setup-node.sh").read_text()
    assert f"TORCH_VERSION={_makefile_torch_version()}\n" in script
    assert f"RAY_VERSION={_deploy_ray_version()}\n" in script
    assert "169.254.169.254/metadata/identity" in script and "vault.azure.net" in script
    site = (DEPLOY / "azure" / "site.env").read_text()
    assert not re.search(r"(?i)(key|password|secret_value|token)=\S{16,}", site)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _deploy_ray_version() -> str:
    (cluster,) = [d for d in _docs(DEPLOY / "kuberay" / "raycluster.yaml") if d["kind"] == "RayCluster"]
    return cluster["spec"]["rayVersion"]


def test_kuberay_cluster_names_images_resources_labels_and_auth() -> None:
    """RayCluster: token auth, private head, CPU and GPU groups labelled with their class, pinned images."""
    docs = {d["kind"]: d for d in _docs(DEPLOY / "kuberay" / "raycluster.yaml")}
    spec = docs["RayCluster"]["spec"]
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-cpus"] == "0"
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"]["ray.io/node-type"] == "head" and policy["policyTypes"] == ["Ingress"]
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"].endswith(f":{__version__}-cpu")
    assert {"mountPath": "/etc/tessera", "name": "run-config", "readOnly": True} in head_container["volumeMounts"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    classes = set()
    for name, group in groups.items():
        hw_class = group["labels"][CLASS_LABEL]
        assert _is_class(hw_class), name
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources == {CLASS_RESOURCE_PREFIX + hw_class: 1}
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["serviceAccountName"] == "tessera-ray"
        assert "env" not in container or all(e["name"] != "RAY_AUTH_TOKEN" or "valueFrom" in e for e in container["env"])
        limits = container["resources"]["limits"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if hw_class.startswith("cuda-"):
            assert container["image"].endswith(f":{__version__}-cuda")
            assert limits["nvidia.com/gpu"] == 1 and group["rayStartParams"]["num-gpus"] == "1"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        else:
            assert container["image"].endswith(f":{__version__}-cpu")
            assert int(limits["cpu"]) >= builtin_policy(hw_class).cores_per_actor
        classes.add(hw_class)
    assert {"cpu-amx", "cuda-T4", "cuda-L4"} <= classes
    sa = docs["ServiceAccount"]["metadata"]["annotations"]
    assert "eks.amazonaws.com/role-arn" in sa and "azure.workload.identity/client-id" in sa


def test_kuberay_job_runs_the_pipeline_with_the_shipped_config() -> None:
    """RayJob: `tessera-pipeline run ... --address auto --config` on the cluster; the ConfigMap is a valid run config."""
    (job,) = _docs(DEPLOY / "kuberay" / "rayjob.yaml")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "tessera"}
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["tessera-pipeline", "run"]
    flags = dict(zip(entry[2::1], entry[3::1]))
    for flag in ("--input", "--store", "--checkpoint", "--year", "--config"):
        assert flag in flags, flag
    assert flags["--address"] == "auto" and "--global" in entry
    submitter = spec["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["tessera/ray-client"] == "true"
    assert submitter["spec"]["containers"][0]["image"].endswith(f":{__version__}-cpu")
    docs = {d["kind"]: d for d in _docs(DEPLOY / "kuberay" / "raycluster.yaml")}
    run_yaml = yaml.safe_load(docs["ConfigMap"]["data"]["run.yaml"])
    config = build_config(merge(run_yaml, {"input": flags["--input"], "store": flags["--store"],
                                           "checkpoint": flags["--checkpoint"], "year": int(flags["--year"])}))
    assert set(config.node_types) <= {g["labels"][CLASS_LABEL] for g in docs["RayCluster"]["spec"]["workerGroupSpecs"]}
    assert config.node_types["cuda-T4"].precision == builtin_policy("cuda-T4").precision


def test_no_secret_in_any_deploy_file() -> None:
    """No token, key or password values in deploy/: they come from secrets and identities."""
    pattern = re.compile(r"(?i)(auth_token|password|secret|access_key|client_secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{20,}")
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not pattern.search(path.read_text()), path


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfiles_install_what_make_install_installs(flavour: str) -> None:
    """Each image pins the Makefile's torch and the cluster's Ray, then installs the package from the repository."""
    text = (DEPLOY / "docker" / f"Dockerfile.{flavour}").read_text()
    assert f"ARG TORCH_VERSION={_makefile_torch_version()}\n" in text
    assert f"ARG RAY_VERSION={_deploy_ray_version()}\n" in text
    assert '"torch==${TORCH_VERSION}"' in text and '"ray[default]==${RAY_VERSION}"' in text
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu" in text
    assert cpu_index == (flavour == "cpu")
    assert "COPY tessera_pipeline " in text and "pip install --no-cache-dir /opt/tessera-pipeline" in text
    # torch goes in before the package, as in the Makefile, so pip never swaps the build.
    assert text.index('"torch==${TORCH_VERSION}"') < text.index("pip install --no-cache-dir /opt/tessera-pipeline")
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and "!tessera_pipeline/" in ignore


def test_operations_docs_name_real_commands_and_files() -> None:
    """docs/operations.md and architecture.md stand alone: their commands exist, their files exist."""
    from tessera_pipeline.cli.main import COMMANDS

    text = "".join((ROOT / "docs" / name).read_text() for name in ("operations.md", "architecture.md"))
    assert "../shared" not in text and "../shared" not in (ROOT / "README.md").read_text()
    subcommands = set(re.findall(r"(?:^\s*|`)tessera-pipeline ([a-z][a-z-]*)", text, re.M))
    assert {"plan", "run", "resume", "status", "reprocess", "bench"} <= subcommands
    assert subcommands <= set(COMMANDS), subcommands - set(COMMANDS)
    for path in set(re.findall(r"\b((?:deploy|docs|tessera_pipeline)/[\w./-]*\w)", text)):
        assert (ROOT / path).exists(), path
