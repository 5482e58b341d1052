"""docker/Dockerfile read: its instructions, stages and ARG defaults. The one parser of it,
for this test and for tests/test_deploy_*.py."""
from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Every instruction as (KEYWORD, args), continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):       # a comment, also one inside a continued RUN
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    out = []
    for instr in logical:
        keyword, _, args = instr.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(path: Path = DOCKERFILE) -> list[dict]:
    """[{'from': image, 'name': stage or None, 'instructions': [(KEYWORD, args)]}]."""
    out = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            out.append({"from": m.group(1), "name": m.group(2), "instructions": []})
        elif out:
            out[-1]["instructions"].append((keyword, args))
    return out


def args(path: Path = DOCKERFILE) -> dict[str, str | None]:
    """Every ARG the file declares, global or in a stage: its default (unexpanded), or None."""
    out = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if default or name not in out:
                out[name] = default or None
    return out


def stage_base(stage: dict, path: Path = DOCKERFILE) -> str:
    """A stage's FROM image, with a whole-name build arg (FROM ${X}) replaced by its default."""
    m = re.fullmatch(r"\$\{?(\w+)\}?", stage["from"])
    return args(path)[m.group(1)] if m else stage["from"]
