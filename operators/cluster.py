"""The operator's Kubernetes calls (the official `kubernetes` client): list what a schedule owns,
create a run's objects, delete a run, read a job spec from a ConfigMap. Exactly the verbs the
chart's operator Role grants.

Creating is idempotent: names are deterministic, so 409 AlreadyExists means "created before"
(by this process before a restart, or a concurrent reconcile) and the existing object is used.
Deleting tolerates 404. Lists are filtered by label on the server and again here (an API that
ignores label selectors must not make a schedule adopt another one's runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from vap.errors import KubeError
from vap.operators import resources as r

log = logging.getLogger(__name__)
RAY = ("ray.io", "v1", "rayjobs")
JOBS = ("batch", "v1", "jobs")  # the custom-objects API serves every /apis group, batch included


def api_client() -> kubernetes.client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: the current kube context."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


@dataclass
class Cluster:
    client: kubernetes.client.ApiClient

    @property
    def custom(self):
        return kubernetes.client.CustomObjectsApi(self.client)

    @property
    def core(self):
        return kubernetes.client.CoreV1Api(self.client)

    def owned(self, namespace: str, schedule: str) -> tuple[list[dict], dict[str, dict]]:
        """(RayJobs, gate Jobs by name) labelled with this schedule."""
        selector = f"{r.SCHEDULE_LABEL}={schedule}"

        def listed(group, version, plural):
            items = self.custom.list_namespaced_custom_object(group, version, namespace, plural,
                                                              label_selector=selector)["items"]
            return [o for o in items if (o["metadata"].get("labels") or {}).get(r.SCHEDULE_LABEL) == schedule]

        gates = {o["metadata"]["name"]: o for o in listed(*JOBS)}
        return listed(*RAY), gates

    def _create(self, obj: dict) -> dict:
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        try:
            if kind == "ConfigMap":
                return self.client.sanitize_for_serialization(self.core.create_namespaced_config_map(ns, obj))
            group, version, plural = RAY if kind == "RayJob" else JOBS
            return self.custom.create_namespaced_custom_object(group, version, ns, plural, obj)
        except ApiException as err:
            if err.status != 409:
                raise
            log.info("%s %s/%s exists already: using it", kind, ns, obj["metadata"]["name"])
            if kind == "ConfigMap":
                return {}
            group, version, plural = RAY if kind == "RayJob" else JOBS
            return self.custom.get_namespaced_custom_object(group, version, ns, plural, obj["metadata"]["name"])

    def create_run(self, objects: list[dict]) -> dict:
        """The RayJob first, then its ConfigMap owned by it (deleted with it). Returns the RayJob."""
        rayjob = self._create(next(o for o in objects if o["kind"] == "RayJob"))
        for obj in objects:
            if obj["kind"] != "RayJob":
                obj["metadata"]["ownerReferences"] = [r.owner_reference(rayjob)]
                self._create(obj)
        return rayjob

    def create_gate(self, gate: dict) -> None:
        self._create(gate)

    def delete_run(self, namespace: str, schedule: str, run: str) -> None:
        """The gate Job, the ConfigMaps the RayJob owns and the RayJob (garbage collection would
        take the first two with the RayJob; deleting them here does not depend on it)."""
        configmaps = self.core.list_namespaced_config_map(namespace, label_selector=f"{r.SCHEDULE_LABEL}={schedule}").items
        calls = [lambda: self.custom.delete_namespaced_custom_object(*JOBS[:2], namespace, JOBS[2], r.gate_job_name(run),
                                                                     propagation_policy="Background")]
        calls += [lambda cm=cm: self.core.delete_namespaced_config_map(cm.metadata.name, namespace)
                  for cm in configmaps if any(o.kind == "RayJob" and o.name == run for o in cm.metadata.owner_references or [])]
        calls.append(lambda: self.custom.delete_namespaced_custom_object(*RAY[:2], namespace, RAY[2], run,
                                                                         propagation_policy="Background"))
        for call in calls:
            try:
                call()
            except ApiException as err:
                if err.status != 404:
                    raise

    def job_spec(self, namespace: str, spec: dict) -> dict:
        """spec.jobSpec, or the YAML under spec.jobSpecFrom.configMapKeyRef {name, key}."""
        if "jobSpec" in spec and "jobSpecFrom" in spec:  # the CRD's CEL rule refuses it; an API server without it may not
            raise KubeError("spec has both jobSpec and jobSpecFrom: keep one (inline, or by ConfigMap)")
        if "jobSpec" in spec:
            return spec["jobSpec"]
        ref = (spec.get("jobSpecFrom") or {}).get("configMapKeyRef") or {}
        name, key = ref.get("name"), ref.get("key", "job.yaml")
        if not name:
            raise KubeError("spec has neither jobSpec nor jobSpecFrom.configMapKeyRef.name: give the job spec inline or by ConfigMap")
        try:
            data = self.core.read_namespaced_config_map(name, namespace).data or {}
        except ApiException as err:
            if err.status == 404:
                raise KubeError(f"jobSpecFrom: ConfigMap {namespace}/{name} does not exist: create it or fix the name") from None
            raise
        if key not in data:
            raise KubeError(f"jobSpecFrom: ConfigMap {namespace}/{name} has no key {key!r} (keys: {', '.join(sorted(data)) or 'none'})")
        try:
            loaded = yaml.safe_load(data[key])
        except yaml.YAMLError as err:
            raise KubeError(f"jobSpecFrom: ConfigMap {namespace}/{name} key {key!r} is not YAML: {err}".replace("\n", " ")) from None
        if not isinstance(loaded, dict):
            raise KubeError(f"jobSpecFrom: ConfigMap {namespace}/{name} key {key!r} is not a YAML mapping (a job spec)")
        return loaded
