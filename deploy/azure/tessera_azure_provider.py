"""Ray's Azure node provider, changed in one thing: only the head VM carries the autoscaler's identity.

Ray's own provider (`provider: {type: azure}`) attaches the provider's managed identity (`msi_name`)
to every VM it creates, and `ray up` gives that identity Contributor on the cluster's resource group
so that the autoscaler on the head can create and delete VMs; every worker could do the same. With
`provider: {type: external, module: tessera_azure_provider.TesseraAzureNodeProvider}` the head keeps
`msi_name` and each worker VM gets `worker_msi_name` instead: an identity made beforehand with only
what a worker needs (read the Ray token; docs/operations.md). Everything else is Ray's Azure provider.

Imported by `ray up`/`ray down` on the launching machine and by the autoscaler on the head: both run
with deploy/azure on PYTHONPATH (docs/operations.md and `head_start_ray_commands` in cluster.yaml).
"""

from __future__ import annotations

import copy
from typing import Any

from ray.autoscaler._private._azure.node_provider import AzureNodeProvider
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

_IDENTITY_PROVIDER = "providers/Microsoft.ManagedIdentity/userAssignedIdentities"


def identity_id(like: str, name: str, resource_group: str | None = None) -> str:
    """The resource id of identity `name`, in the subscription (and unless given, resource group) of id `like`."""
    parts = like.strip("/").split("/")
    if len(parts) != 8 or parts[0].lower() != "subscriptions" or parts[2].lower() != "resourcegroups" \
            or "/".join(parts[4:7]).lower() != _IDENTITY_PROVIDER.lower():
        raise ValueError(f"not a user-assigned identity id: {like!r}")
    return f"/subscriptions/{parts[1]}/resourceGroups/{resource_group or parts[3]}/{_IDENTITY_PROVIDER}/{name}"


class TesseraAzureNodeProvider(AzureNodeProvider):
    """Creates the head with `provider.msi_name` and every worker with `provider.worker_msi_name`."""

    def _create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> None:
        """Ray's VM deployment, with the workers' identity in place of the autoscaler's on worker VMs."""
        if tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD:
            return super()._create_node(node_config, tags, count)
        name = self.provider_config.get("worker_msi_name")
        if not name:
            raise ValueError("provider.worker_msi_name is not set: refusing to give a worker VM the autoscaler's "
                             "identity (see deploy/azure/cluster.yaml)")
        worker = copy.copy(self)
        worker.provider_config = {
            **self.provider_config,
            "msi": identity_id(self.provider_config["msi"], name, self.provider_config.get("worker_msi_resource_group")),
        }
        return AzureNodeProvider._create_node(worker, node_config, tags, count)
