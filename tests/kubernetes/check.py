#!/usr/bin/env python3
"""Validate examples/kubernetes/*.yaml against the Kubernetes schemas (kubernetes-validate,
pinned, installed into a virtualenv in the cache directory) and check that its timings and
ports agree with the corral config it carries.

    python3 tests/kubernetes/check.py [--cache DIR] [--k8s-version 1.33.0]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VALIDATOR = "kubernetes-validate==1.37.0"


def venv(cache):
    d = os.path.join(cache, "k8s-venv")
    py = os.path.join(d, "bin", "python")
    mark = os.path.join(d, ".corral-stamp")
    if not (os.path.exists(mark) and open(mark).read() == VALIDATOR):
        subprocess.run([sys.executable, "-m", "venv", "--clear", d], check=True)
        subprocess.run([os.path.join(d, "bin", "pip"), "install", "-q", "--disable-pip-version-check", VALIDATOR],
                       check=True)
        open(mark, "w").write(VALIDATOR)
    return py


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise SystemExit(f"cannot read duration {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "frameworks-cache"))
    ap.add_argument("--k8s-version", default="1.33.0")
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "debug", "corral"))
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(ROOT, "examples", "kubernetes", "*.yaml")))
    if not files:
        raise SystemExit("no manifests in examples/kubernetes")
    py = venv(a.cache)
    # 1. The schemas, strictly (unknown fields are errors).
    r = subprocess.run([os.path.join(os.path.dirname(py), "kubernetes-validate"), "--strict",
                        "--kubernetes-version", a.k8s_version, *files], capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    if r.returncode != 0:
        raise SystemExit(f"kubernetes-validate failed ({r.returncode})")
    # 2. What the schemas cannot see: the pieces agree with each other and with corral.
    script = r"""
import json, sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
print(json.dumps(docs))
"""
    docs = __import__("json").loads(subprocess.run([py, "-c", script, *files], capture_output=True, text=True,
                                                   check=True).stdout)
    kinds = {d["kind"]: d for d in docs}
    for k in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap"):
        if k not in kinds:
            raise SystemExit(f"missing a {k}")
    cfg = tomllib.loads(next(iter(kinds["ConfigMap"]["data"].values())))
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "app.toml")
        open(path, "w").write(next(iter(kinds["ConfigMap"]["data"].values())))
        r = subprocess.run([a.corral, "check", "-c", path], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"corral check refuses the ConfigMap's config: {r.stderr.strip()}")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    stop = cfg.get("stop", {})
    timeout, drain = seconds(stop.get("timeout", "30s")), seconds(stop.get("drain", "0s"))
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_sleep = float(pre[-1]) if pre and pre[0].endswith("sleep") else 0
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if pre_sleep <= 0:
        problems.append("no preStop sleep: endpoints need time to drop the pod")
    if grace < pre_sleep + drain + timeout:
        problems.append(f"terminationGracePeriodSeconds {grace} < preStop {pre_sleep} + drain {drain} + "
                        f"stop.timeout {timeout}: Kubernetes would SIGKILL a draining pod")
    metrics_port = int(cfg["metrics"]["listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("metrics") != metrics_port:
        problems.append(f"containerPort metrics {ports.get('metrics')} is not corral's metrics port {metrics_port}")
    http_port = int(cfg["listen"][0].rsplit(":", 1)[1])
    if ports.get("http") != http_port:
        problems.append(f"containerPort http {ports.get('http')} is not the pool's port {http_port}")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        got = c.get(probe, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") not in ("metrics", metrics_port):
            problems.append(f"{probe} should GET {path} on the metrics port, not {got}")
    if cfg.get("instances") == "max" and "cpu" not in c.get("resources", {}).get("limits", {}):
        problems.append('instances = "max" without a CPU limit counts the node\'s CPUs')
    svc = kinds["Service"]["spec"]
    if svc["selector"] != kinds["Deployment"]["spec"]["selector"]["matchLabels"]:
        problems.append("the Service does not select the Deployment's pods")
    pdb = kinds["PodDisruptionBudget"]["spec"]
    if pdb["selector"]["matchLabels"] != kinds["Deployment"]["spec"]["selector"]["matchLabels"]:
        problems.append("the PodDisruptionBudget does not select the Deployment's pods")
    if pdb.get("minAvailable", 0) >= kinds["Deployment"]["spec"]["replicas"]:
        problems.append("minAvailable >= replicas: no node could ever be drained")
    if drain <= 0:
        problems.append("stop.drain is 0: load balancers probing /ready get no warning")
    for p in problems:
        print("FAIL:", p)
    if problems:
        sys.exit(1)
    print(f"ok: {len(docs)} objects valid for Kubernetes {a.k8s_version}; grace {grace}s >= preStop {pre_sleep}s + "
          f"drain {drain}s + stop.timeout {timeout}s")


if __name__ == "__main__":
    main()
