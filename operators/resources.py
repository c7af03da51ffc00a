"""The objects the operator owns: its custom resource, each run's RayJob (rendered by `vap.kube`,
the code behind `make submit-job`) and the Job that gates a finished run.

Names are deterministic — `<schedule>-<tick as YYYYMMDDHHMM UTC>` for a scheduled run,
`<schedule>-d<digest>` for new data — so a restarted operator finds the run it created instead
of creating a second one.
"""

from __future__ import annotations

import copy
from datetime import datetime

from vap.errors import KubeError
from vap.kube.helm import parse_manifests, render
from vap.kube.validation import validate
from vap.kube.values import values_from_spec
from vap.spec import parse_spec

GROUP, VERSION, PLURAL, KIND = "vap.dev", "v1alpha1", "vapretrainschedules", "VAPRetrainSchedule"
API_VERSION = f"{GROUP}/{VERSION}"
SCHEDULE_LABEL = f"{GROUP}/schedule"  # on every object a schedule owns
TRIGGER_LABEL = f"{GROUP}/trigger"  # schedule | data
TICK_ANNOTATION = f"{GROUP}/tick"  # the tick (UTC, ISO 8601) a scheduled run is for
GATE_REFUSED_EXIT = 3  # `vap retrain --gate-only` exits with it when the gate refuses the candidate
POLICIES = {"RegisterOnly": "register", "PromoteIfGatePasses": "promote"}
GATE_DEADLINE_S = 3600  # the gate Job's activeDeadlineSeconds unless spec.evaluation sets it


def _prefix(schedule: str) -> str:
    return schedule[:28].rstrip("-")


def run_name(schedule: str, tick: datetime) -> str:
    return f"{_prefix(schedule)}-{tick.strftime('%Y%m%d%H%M')}"


def data_run_name(schedule: str, digest: str) -> str:
    return f"{_prefix(schedule)}-d{digest[:12]}"


def gate_job_name(run: str) -> str:
    return f"{run}-gate"


def owner_reference(obj: dict, controller: bool = True) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def run_objects(schedule: dict, job_spec: dict, name: str, trigger: str, tick: datetime | None = None) -> list[dict]:
    """The ConfigMap and RayJob of one run, rendered and validated as `make submit-job` does; the
    RayJob is owned by the schedule, the ConfigMap by the RayJob (deleted with it)."""
    meta = schedule["metadata"]
    spec = parse_spec({**job_spec, "name": name}, source=f"{KIND} {meta['name']} spec.jobSpec")
    values = values_from_spec(spec, schedule["spec"].get("values") or {}, image=schedule["spec"].get("image"))
    objects = parse_manifests(render(values, name, meta["namespace"]))
    labels = {SCHEDULE_LABEL: meta["name"], TRIGGER_LABEL: trigger, "app.kubernetes.io/managed-by": "vap-operator"}
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(labels)
        if obj["kind"] == "RayJob":
            obj["metadata"]["ownerReferences"] = [owner_reference(schedule)]
            if tick is not None:
                obj["metadata"].setdefault("annotations", {})[TICK_ANNOTATION] = tick.isoformat()
    kinds = [o["kind"] for o in objects]
    if kinds.count("RayJob") != 1:
        raise KubeError(f"{meta['name']}: the train chart rendered {kinds}, expected one RayJob")
    validate(objects)  # what is sent, labels and owner reference included
    return objects


def gate_job(rayjob: dict, policy: str, evaluation: dict | None = None) -> dict:
    """The batch Job that evaluates a succeeded run and registers or promotes it, running
    `vap retrain --gate-only` in the run's head pod template: the one that mounts the job spec at
    /etc/vap and carries the storage and MLflow credentials (the submitter's carries neither).
    `evaluation` (the schedule's spec.evaluation: pairs, split, resources, activeDeadlineSeconds) adds `vap eval` of the
    version first; its `resources` replace the head's for that pod, and a GPU among them places
    the pod as the run's workers are (their nodeSelector and tolerations).
    Exit code GATE_REFUSED_EXIT fails the Job at once (podFailurePolicy) and says "refused"."""
    pod = copy.deepcopy(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    pod["metadata"].setdefault("labels", {})["vap-platform/role"] = "gate"
    [container] = pod["spec"]["containers"]
    container["name"] = "gate"
    container["command"] = ["vap", "retrain", "--config", "/etc/vap/job.yaml", "--gate-only",
                            "--policy", POLICIES[policy]]
    for ray_only in ("args", "ports", "lifecycle"):  # Ray's head: its ports, KubeRay's start command
        container.pop(ray_only, None)
    if evaluation:
        container["command"] += ["--eval-pairs", str(evaluation["pairs"]), "--eval-split", evaluation.get("split", "val")]
        resources = evaluation.get("resources")
        if resources:
            container["resources"] = copy.deepcopy(resources)
        if any("nvidia.com/gpu" in (resources or {}).get(k, {}) for k in ("requests", "limits")):
            # a GPU pod goes where the run's GPU workers go: their node pool and its taints
            worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
            for placement in ("nodeSelector", "tolerations"):
                pod["spec"].pop(placement, None)
                if placement in worker:
                    pod["spec"][placement] = copy.deepcopy(worker[placement])
    pod["spec"]["restartPolicy"] = "Never"
    name = gate_job_name(rayjob["metadata"]["name"])
    labels = {k: v for k, v in rayjob["metadata"].get("labels", {}).items()
              if k.startswith((GROUP, "app.kubernetes.io/"))}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": rayjob["metadata"]["namespace"],
                     "labels": {**labels, "app.kubernetes.io/component": "gate"},
                     "ownerReferences": [owner_reference(rayjob)]},
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": (evaluation or {}).get("activeDeadlineSeconds", GATE_DEADLINE_S),
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": "gate", "operator": "In", "values": [GATE_REFUSED_EXIT]}}]},
            "template": pod,
        },
    }
