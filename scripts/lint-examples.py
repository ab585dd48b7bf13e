"""Lints the deployment examples, which this project's CI cannot run (no Docker daemon, no Kubernetes
cluster): each must parse as YAML and hold together. docker-compose.yml: every service builds from a
Dockerfile that exists or names an image, and a service whose AUTH_SEEDS names a host names a service of
the file, at a port its servers listen on. kubernetes.yml: the Deployment's selector matches its pods'
labels, every Service selects those pods and targets a port the container declares, the headless
Service is headless, AUTH_SEEDS names it at its port, and every secretKeyRef names a Secret of the file
and one of its keys."""

import os
import sys

import yaml


def env_of(container):
    """A container's environment as a dict (Compose allows a list of NAME=value too)."""
    env = container.get("environment") or container.get("env") or {}
    if isinstance(env, list):
        if env and isinstance(env[0], dict):
            return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}
        return dict(e.split("=", 1) for e in env)
    return env


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


def lint_compose(path):
    errors = []
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or {}
    if not services:
        errors.append("no services")
    for name, service in services.items():
        build = service.get("build")
        if build is None and "image" not in service:
            errors.append(f"service {name}: neither build nor image")
        if isinstance(build, dict):
            context = os.path.join(os.path.dirname(path), build.get("context", "."))
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(dockerfile):
                errors.append(f"service {name}: no Dockerfile at {dockerfile}")
        env = env_of(service)
        for seed in filter(None, str(env.get("AUTH_SEEDS", "")).split(",")):
            host = seed.rsplit(":", 1)[0]
            if host not in services:
                errors.append(f"service {name}: AUTH_SEEDS names {host}, not a service")
            elif "AUTH_PEER" in env_of(services[host]) and port_of(env_of(services[host])["AUTH_PEER"]) != port_of(seed):
                errors.append(f"service {name}: AUTH_SEEDS {seed} is not the port {host} listens on")
    return errors


def lint_kubernetes(path):
    errors = []
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        for field in ("apiVersion", "kind", "metadata"):
            if field not in d:
                errors.append(f"a document without {field}")
        by_kind.setdefault(d.get("kind"), []).append(d)
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    services = by_kind.get("Service", [])
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        errors.append("no Deployment")
    for dep in deployments:
        name = dep["metadata"]["name"]
        spec = dep["spec"]
        labels = spec["template"]["metadata"]["labels"]
        selector = spec["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"Deployment {name}: selector {selector} does not match its pods' labels {labels}")
        containers = spec["template"]["spec"]["containers"]
        ports = {p.get("name"): p["containerPort"] for c in containers for p in c.get("ports", [])}
        for svc in services:
            sname = svc["metadata"]["name"]
            if any(labels.get(k) != v for k, v in svc["spec"].get("selector", {}).items()):
                errors.append(f"Service {sname}: selects no pod of Deployment {name}")
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                if target not in ports and target not in ports.values():
                    errors.append(f"Service {sname}: targetPort {target} is no port of the pods")
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
        for c in containers:
            env = env_of(c)
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = secrets.get(ref["name"])
                    keys = set((secret or {}).get("data") or {}) | set((secret or {}).get("stringData") or {})
                    if secret is None or ref["key"] not in keys:
                        errors.append(f"container {c['name']}: secretKeyRef {ref} names no Secret key of the file")
            for seed in filter(None, str(env.get("AUTH_SEEDS") or "").split(",")):
                host, port = seed.rsplit(":", 1)
                match = [s for s in headless if s["metadata"]["name"] == host]
                if not match:
                    errors.append(f"container {c['name']}: AUTH_SEEDS {seed} does not name a headless Service")
                elif int(port) not in [p["port"] for p in match[0]["spec"]["ports"]]:
                    errors.append(f"container {c['name']}: AUTH_SEEDS {seed} is not a port of Service {host}")
                if "AUTH_PEER" in env and port_of(env["AUTH_PEER"]) not in ports.values():
                    errors.append(f"container {c['name']}: AUTH_PEER is not a declared container port")
    return errors


LINTERS = {"docker-compose.yml": lint_compose, "kubernetes.yml": lint_kubernetes}

failed = False
for path in sys.argv[1:]:
    errors = LINTERS[os.path.basename(path)](path)
    for error in errors:
        print(f"{path}: {error}")
    print(f"{path}: {len(errors)} errors")
    failed = failed or bool(errors)
sys.exit(1 if failed else 0)
