"""Write constraints.txt: the installed version of every package fsar (with the given extras) needs, recursively.

Run after a green test run to record what the suite passed with; both README commands (and so .ci/run) install
with ``-c constraints.txt``.

    python .ci/pin_constraints.py --extras test > constraints.txt
"""
from __future__ import annotations

import argparse
import re
from importlib import metadata

from packaging.requirements import Requirement


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """{distribution name: installed version} for root and everything it requires (markers evaluated here)."""
    seen: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, want = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in seen and not want:
            continue
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            env_ok = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in (want or {""}))
            if req.marker is not None and "extra" in str(req.marker):
                env_ok = any(req.marker.evaluate({"extra": e}) for e in want)
            if env_ok:
                todo.append((req.name, set(req.extras)))
    return seen


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--extras", nargs="*", default=["test"])
    args = p.parse_args()
    pins = closure("fsar", set(args.extras))
    pins.pop("fsar", None)
    pins.pop("torch", None)  # named by the install commands themselves (torch==2.13.0, the local CPU build)
    print("# what the test suite last passed with (python .ci/pin_constraints.py --extras test > constraints.txt)")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
