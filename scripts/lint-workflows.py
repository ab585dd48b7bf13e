"""Lints the CI service's workflow files, which cannot run on this project's own CI: each must parse as
YAML and have the shape the service needs (a trigger, jobs that each name a runner and list steps, each
step either `uses` an action or `run`s a command, `needs` naming jobs that exist), so that a broken
release pipeline is found before a release tag is pushed."""

import sys

import yaml


def lint(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    errors = []
    # YAML 1.1 reads the bare key `on` as the boolean true.
    if "on" not in doc and True not in doc:
        errors.append("no `on:` trigger")
    jobs = doc.get("jobs") or {}
    if not jobs:
        errors.append("no jobs")
    for name, job in jobs.items():
        if "runs-on" not in job:
            errors.append(f"job {name}: no runs-on")
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                errors.append(f"job {name}: needs unknown job {need}")
        steps = job.get("steps") or []
        if not steps:
            errors.append(f"job {name}: no steps")
        for i, step in enumerate(steps):
            if ("uses" in step) == ("run" in step):
                errors.append(f"job {name}, step {i + 1}: needs exactly one of uses and run")
    return errors


failed = False
for path in sys.argv[1:]:
    errors = lint(path)
    for error in errors:
        print(f"{path}: {error}")
    print(f"{path}: {len(errors)} errors")
    failed = failed or bool(errors)
sys.exit(1 if failed else 0)
