"""Print the requirements of some of pyproject.toml's dependency groups, one per line, for `pip install -r`.

The image installs its dependencies before its code (so a code edit does not reinstall them), which means
before pip can read the package itself; this reads the same groups from pyproject.toml instead of a copy.
Groups that name the project itself (`nexusml-dataplane[sync]`) are expanded. Usage:
    python3 extras.py pyproject.toml sync proxy
"""

import re
import sys
import tomllib


def requirements(project: dict, groups: list[str]) -> list[str]:
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = list(groups), set()
    while pending:
        group = pending.pop()
        if group in seen:
            continue
        seen.add(group)
        for requirement in project["optional-dependencies"][group]:
            itself = re.fullmatch(rf"{re.escape(project['name'])}\[([^\]]+)\]", requirement)
            if itself:
                pending.extend(name.strip() for name in itself.group(1).split(","))
            elif requirement not in found:
                found.append(requirement)
    return found


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        project = tomllib.load(file)["project"]
    print("\n".join(requirements(project, sys.argv[2:])))
