"""deploy/: the Azure launcher config passes Ray's own validation, the KubeRay manifests name what `run`
and Ray need, and every image and node installs the same pinned versions as `make install`."""

from __future__ import annotations

import copy
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

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
    assert prepared["provider"] == {**raw["provider"], "type": "external", "module": AZURE_PROVIDER}
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


AZURE_PROVIDER = "tessera_azure_provider.TesseraAzureNodeProvider"
#: The Azure SDK modules Ray's Azure provider imports (not a dependency of this project: stand-ins replace them).
AZURE_SDK = ("azure", "azure.common", "azure.common.credentials", "azure.core", "azure.core.exceptions",
             "azure.identity", "azure.mgmt", "azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource",
             "azure.mgmt.resource.resources", "azure.mgmt.resource.resources.models")
SUBSCRIPTION = "00000000-0000-0000-0000-00000000abcd"


def _stand_in(name: str) -> types.ModuleType:
    """An empty package whose every attribute is a mock."""
    module = types.ModuleType(name)
    module.__path__ = []
    module.__getattr__ = lambda attr: mock.MagicMock(name=f"{name}.{attr}")  # type: ignore[method-assign]
    return module


@pytest.fixture
def azure_provider_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """deploy/azure on sys.path, as `ray up` and the head's autoscaler run; stand-ins when the Azure SDK is missing."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(DEPLOY / "azure"))
    try:
        import azure.mgmt.compute  # noqa: F401
    except ImportError:
        for name in AZURE_SDK:
            monkeypatch.setitem(sys.modules, name, _stand_in(name))
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("tessera_azure_provider", "ray.autoscaler._private._azure")):
            del sys.modules[name]


def _identity(resource_group: str, name: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}")


def _vm_identity(provider_config: dict[str, Any], node: dict[str, Any], kind: str) -> str:
    """The identity Ray's ARM deployment attaches to a new VM of this node type (Azure calls faked, Ray's code real)."""
    from ray.autoscaler._private.providers import _get_node_provider_cls
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME

    cls = _get_node_provider_cls(provider_config)
    provider = cls.__new__(cls)  # no __init__: no Azure login
    provider.cluster_name = "tessera"
    provider.cache_stopped_nodes = False
    # What `ray up`'s bootstrap adds: the provider identity's id (msi_name in msi_resource_group), NSG, subnet.
    provider.provider_config = {**provider_config, "unique_id": "0123abcd", "nsg": "nsg-id", "subnet": "subnet-id",
                                "msi": _identity(provider_config["msi_resource_group"], provider_config["msi_name"])}
    provider.resource_client = mock.MagicMock()
    provider._validate_zones_for_node_pool = lambda *args: []
    provider.create_node(node["node_config"], {TAG_RAY_NODE_KIND: kind, TAG_RAY_NODE_NAME: "n"}, 1)
    deployment = provider.resource_client.deployments.create_or_update.call_args.kwargs["parameters"]
    return str(deployment["properties"]["parameters"]["msi"]["value"])


@pytest.mark.parametrize("path", AZURE_CONFIGS, ids=lambda p: p.name)
def test_azure_workers_do_not_carry_the_autoscalers_identity(path: Path, azure_provider_path: None) -> None:
    """Only the head VM gets the identity `ray up` makes Contributor of the resource group (create/delete VMs)."""
    config = yaml.safe_load(path.read_text())
    provider = config["provider"]
    assert provider["type"] == "external" and provider["module"] == AZURE_PROVIDER
    head = _identity(provider["msi_resource_group"], provider["msi_name"])
    worker = _identity(provider.get("worker_msi_resource_group", provider["msi_resource_group"]),
                       provider["worker_msi_name"])
    assert worker != head
    for name, node in config["available_node_types"].items():
        kind = "head" if name == config["head_node_type"] else "worker"
        assert _vm_identity(provider, node, kind) == (head if kind == "head" else worker), name
    without = {k: v for k, v in provider.items() if k != "worker_msi_name"}
    with pytest.raises(ValueError, match="worker_msi_name"):
        _vm_identity(without, config["available_node_types"]["cpu-amx"], "worker")
    # The autoscaler on the head loads the same class: deploy/azure is on its PYTHONPATH.
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert "PYTHONPATH=$HOME/tessera-pipeline/deploy/azure " in head_start
    # The one-time setup in the docs makes exactly these identities, where the config looks for them.
    ops = (ROOT / "docs" / "operations.md").read_text()
    for group, name in ((provider["msi_resource_group"], provider["msi_name"]),
                        (provider["worker_msi_resource_group"], provider["worker_msi_name"])):
        assert f"az identity create -g {group} -n {name}\n" in ops


def test_azure_provider_is_rays_own_but_for_the_identity(azure_provider_path: None) -> None:
    """Bootstrap (keys, resource group, NSG, the head identity's role) and everything else stay Ray's."""
    from ray.autoscaler._private._azure.node_provider import AzureNodeProvider
    from tessera_azure_provider import TesseraAzureNodeProvider, identity_id

    assert issubclass(TesseraAzureNodeProvider, AzureNodeProvider)
    overridden = {k for k in vars(TesseraAzureNodeProvider) if not k.startswith("__")}
    assert overridden == {"_create_node"}
    assert identity_id(_identity("g", "head"), "w") == _identity("g", "w")
    assert identity_id(_identity("g", "head"), "w", "shared") == _identity("shared", "w")
    with pytest.raises(ValueError):
        identity_id("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm", "w")


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
        assert pod["serviceAccountName"] == "tessera-ray-worker"
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
    for sa in (d for d in _docs(DEPLOY / "kuberay" / "raycluster.yaml") if d["kind"] == "ServiceAccount"):
        annotations = sa["metadata"]["annotations"]
        assert "eks.amazonaws.com/role-arn" in annotations and "azure.workload.identity/client-id" in annotations


def test_kuberay_workers_have_their_own_service_account_without_the_autoscalers_rights() -> None:
    """KubeRay binds the autoscaler's Role to the head pod's ServiceAccount; workers must not share it."""
    docs = [d for path in sorted((DEPLOY / "kuberay").glob("*.yaml")) for d in _docs(path)]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    workers = {g["template"]["spec"]["serviceAccountName"] for g in cluster["spec"]["workerGroupSpecs"]}
    assert head == "tessera-ray-head" and workers == {"tessera-ray-worker"}
    assert set(accounts) == {head, "tessera-ray-worker"}
    worker = accounts["tessera-ray-worker"]
    assert worker["automountServiceAccountToken"] is False  # no Kubernetes API token in a worker pod at all
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(s["name"] == head for b in bindings for s in b["subjects"] if s["kind"] == "ServiceAccount")
    for key, value in worker["metadata"]["annotations"].items():  # its own cloud role, not the head's
        assert value != accounts[head]["metadata"]["annotations"][key], key


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


def _demand(run_config: dict[str, Any]) -> dict[str, int]:
    return {cls: int(v["max_actors"]) for cls, v in run_config["node_types"].items() if v.get("max_actors")}


def test_the_fleet_follows_the_run_on_azure_and_kuberay() -> None:
    """Each class the shipped run configs ask for by demand has a node type (group) declaring its resource that
    the autoscaler may start from zero, enough of them for the actors, and the run configs validate."""
    from tessera_pipeline.run.config import build_config

    base = {"input": "s3://i", "store": "s3://s", "checkpoint": "c.pt", "year": 2024}
    azure_run = yaml.safe_load((DEPLOY / "azure" / "run-config.yml").read_text())
    build_config({**base, **azure_run})
    cluster = yaml.safe_load((DEPLOY / "azure" / "cluster.yaml").read_text())
    types = {_node_class(n): n for name, n in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    for cls, actors in _demand(azure_run).items():
        node = types[cls]
        per_node = node["resources"].get("GPU") or node["resources"]["CPU"] // azure_run["node_types"][cls]["cpus_per_actor"]
        assert node["min_workers"] == 0 and node["max_workers"] * per_node >= actors, (cls, node)
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay" / "raycluster.yaml").read_text()))
    ray_cluster = next(d for d in docs if d and d.get("kind") == "RayCluster")
    assert ray_cluster["spec"]["enableInTreeAutoscaling"] is True
    run_config = yaml.safe_load(next(d for d in docs if d and d.get("kind") == "ConfigMap")["data"]["run.yaml"])
    build_config({**base, **run_config})
    groups = {g["groupName"]: g for g in ray_cluster["spec"]["workerGroupSpecs"]}
    for cls in _demand(run_config):
        group = next(g for g in groups.values() if f"tessera_class:{cls}" in g["rayStartParams"]["resources"])
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1, cls
