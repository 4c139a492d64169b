#!/usr/bin/env python3
"""Validates deploy/kserve/*.yaml (run by tests/deploy.rs):

- each KServe resource against the openAPIV3Schema of its CRD from KServe v0.20.0
  (deploy/kserve/schema/, with their source), strictly: an unknown field is an error, as the
  API server's strict field validation (kubectl's default) makes it;
- the runtime's container, as the Pod KServe would make of it, and the committed CRD files
  themselves against Kubernetes 1.37's schemas from kubernetes-validate (strict);
- what the issue asks of the runtime (formats, protocols, args, probes, Prometheus
  annotations, Triton's securityContext);
- and that the validation can fail: broken copies (a misspelled field, a wrong type, a missing
  required field) are each refused.

    venv-test/bin/python tests/validate_manifests.py deploy/kserve [--args]

`--args` prints the runtime container's args and probe ports as JSON (for the test that runs
the real binary with them) instead. Prints one line per check and `OK <n> checks`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

K8S = "1.37.0"
checks = 0


def check(cond: bool, what: str) -> None:
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def strict(schema):
    """The schema with `additionalProperties: false` on every object that lists its properties
    and does not preserve unknown fields (what strict field validation rejects)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validators(schema_dir: Path) -> dict:
    out = {}
    for f in sorted(schema_dir.glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        errors = k8s_errors(crd)
        check(not errors, f"{f.name} is a valid CustomResourceDefinition for Kubernetes {K8S}")
        group = crd["spec"]["group"]
        for v in crd["spec"]["versions"]:
            schema = strict(v["schema"]["openAPIV3Schema"])
            key = (f"{group}/{v['name']}", crd["spec"]["names"]["kind"])
            out[key] = jsonschema.Draft7Validator(schema)
    return out


def errors_of(validators: dict, doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in validators:
        return [f"no schema for {key}"]
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validators[key].iter_errors(doc)
    ]


def pod_of(runtime: dict) -> dict:
    """The Pod KServe makes from the runtime: its containers, `{{.Name}}` filled in."""
    containers = json.loads(json.dumps(runtime["spec"]["containers"]).replace("{{.Name}}", "digits"))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "digits-predictor", "annotations": runtime["spec"]["annotations"]},
        "spec": {"containers": containers},
    }


def k8s_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S, strict=True)  # returns the version; raises
    except kubernetes_validate.ValidationError as e:
        return [str(e)]
    return []


def main() -> None:
    root = Path(sys.argv[1])
    docs = {f.name: yaml.safe_load(f.read_text()) for f in sorted(root.glob("*.yaml"))}
    runtime = docs["clusterservingruntime.yaml"]
    container = runtime["spec"]["containers"][0]
    if "--args" in sys.argv:
        probes = {p: container[p]["httpGet"] for p in ("readinessProbe", "startupProbe", "livenessProbe")}
        print(json.dumps({"args": container["args"], "probes": probes}))
        return
    validators = crd_validators(root / "schema")
    for name, doc in docs.items():
        errs = errors_of(validators, doc)
        check(not errs, f"{name} ({doc['kind']}) against KServe's CRD schema: {errs}")
    errs = k8s_errors(pod_of(runtime))
    check(not errs, f"the runtime's Pod against Kubernetes {K8S} (strict): {errs}")

    # What the issue asks of the runtime.
    spec = runtime["spec"]
    check(
        {(f["name"], f.get("autoSelect")) for f in spec["supportedModelFormats"]}
        == {("jax-export", True), ("stablehlo", True)},
        "formats jax-export and stablehlo, auto-selected",
    )
    check(spec["protocolVersions"] == ["v2", "grpc-v2"], "protocols v2 and grpc-v2")
    check(
        container["args"]
        == ["serve", "--models", "/mnt/models", "--model-name", "{{.Name}}",
            "--addr", "0.0.0.0:8080", "--grpc-addr", "0.0.0.0:8081"],
        f"args {container['args']}",
    )
    ready, start, live = (container[p] for p in ("readinessProbe", "startupProbe", "livenessProbe"))
    check(ready["httpGet"] == {"path": "/v2/health/ready", "port": 8080}, "readiness: GET /v2/health/ready")
    check(start["httpGet"] == {"path": "/v2/health/ready", "port": 8080}, "startup: GET /v2/health/ready")
    window = start["periodSeconds"] * start["failureThreshold"]
    check(window >= 600, f"startup window {window} s covers compiling (>= 600 s)")
    check(live["httpGet"] == {"path": "/v2/health/live", "port": 8080}, "liveness: GET /v2/health/live")
    check(
        spec["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"},
        "Prometheus annotations: port 8080, /metrics",
    )
    sc = container["securityContext"]
    check(
        sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        and sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        and sc["runAsUser"] != 0,
        f"Triton's securityContext: {sc}",
    )
    for name in ("inferenceservice.yaml", "inferenceservice-grpc.yaml"):
        m = docs[name]["spec"]["predictor"]["model"]
        check(m["runtime"] == runtime["metadata"]["name"] and m["modelFormat"]["name"] == "jax-export",
              f"{name} uses the runtime")
    grpc = docs["inferenceservice-grpc.yaml"]["spec"]["predictor"]["model"]
    check(grpc["protocolVersion"] == "grpc-v2"
          and grpc["ports"] == [{"name": "h2c", "protocol": "TCP", "containerPort": 8081}],
          "the gRPC example exposes 8081 as h2c")

    # The validation can fail.
    def broken(doc, edit):
        d = copy.deepcopy(doc)
        edit(d)
        return d

    c0 = lambda d: d["spec"]["containers"][0]  # noqa: E731
    bad = {
        "a misspelled container field (startupProbes)":
            broken(runtime, lambda d: c0(d).update(startupProbes=c0(d).pop("startupProbe"))),
        "runAsNonRoot as a string":
            broken(runtime, lambda d: c0(d)["securityContext"].update(runAsNonRoot="yes")),
        "a probe without a port":
            broken(runtime, lambda d: c0(d)["readinessProbe"]["httpGet"].pop("port")),
        "a model format without a name":
            broken(runtime, lambda d: d["spec"]["supportedModelFormats"][0].pop("name")),
    }
    for what, doc in bad.items():
        errs = errors_of(validators, doc)
        check(bool(errs), f"KServe's schema refuses {what}: {errs[:1]}")
    for what in ("a misspelled container field (startupProbes)", "runAsNonRoot as a string",
                 "a probe without a port"):
        errs = k8s_errors(pod_of(bad[what]))
        check(bool(errs), f"Kubernetes' schema refuses {what}: {[e[:120] for e in errs]}")
    isvc = docs["inferenceservice.yaml"]
    errs = errors_of(validators, broken(isvc, lambda d: d["spec"]["predictor"]["model"].update(storageURI="x")))
    check(bool(errs), f"KServe's schema refuses storageURI (for storageUri): {errs[:1]}")
    print(f"OK {checks} checks")


if __name__ == "__main__":
    main()
