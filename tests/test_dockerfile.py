"""The ``Dockerfile`` without a container engine: a small parser and linter (valid
instructions, no syntax directive, the base a build argument pinned by digest, installs only
from hash-pinned locks, the ENTRYPOINT a declared console script, COPY sources that exist and
survive ``.dockerignore``, a runtime stage that only copies the venv) and the image's settings
against the DaemonSet's securityContext.

tests/test_image.py builds the image for real with podman and runs it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
FLAGS = {  # the flags each instruction accepts (BuildKit dockerfile:1 frontend)
    "FROM": {"platform"},
    "RUN": {"mount", "network", "security"},
    "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
    "ADD": {"chown", "chmod", "link", "keep-git-dir", "checksum", "exclude"},
}


# -- a small Dockerfile parser -------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str
    flags: list[tuple[str, str]] = field(default_factory=list)

    def flag(self, name: str) -> list[str]:
        return [v for k, v in self.flags if k == name]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


class DockerfileError(ValueError):
    pass


def parse(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """``(parser directives, instructions)``; continuation lines joined, comments dropped."""
    directives: dict[str, str] = {}
    out: list[Instruction] = []
    lines = text.splitlines()
    i = 0
    in_header = True
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        stripped = raw.strip()
        if not stripped:
            in_header = False
            continue
        if stripped.startswith("#"):
            m = re.fullmatch(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*", stripped)
            if in_header and m:
                directives[m.group(1).lower()] = m.group(2)
            else:
                in_header = False
            continue
        in_header = False
        logical = stripped
        while logical.endswith("\\"):
            logical = logical[:-1].rstrip() + " "
            # Comment lines inside a continuation are removed, as Docker does.
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1
            if i >= len(lines):
                raise DockerfileError(f"line {start}: continuation at end of file")
            logical += lines[i].strip()
            i += 1
        keyword, _, rest = logical.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: unknown instruction {keyword!r}")
        if keyword != keyword.upper():
            raise DockerfileError(f"line {start}: write instructions in upper case ({keyword})")
        flags: list[tuple[str, str]] = []
        rest = rest.strip()
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            if name not in FLAGS.get(keyword, set()):
                raise DockerfileError(f"line {start}: {keyword} does not take --{name}")
            flags.append((name, value))
            rest = rest.strip()
        if not rest:
            raise DockerfileError(f"line {start}: {keyword} without arguments")
        out.append(Instruction(start, keyword, rest, flags))
    return directives, out


def stages(instructions: list[Instruction]) -> list[Stage]:
    out: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            parts = ins.args.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                out.append(Stage(parts[0], parts[2]))
            elif len(parts) == 1:
                out.append(Stage(parts[0], None))
            else:
                raise DockerfileError(f"line {ins.line}: FROM image [AS name] expected")
        elif not out:
            if ins.keyword != "ARG":
                raise DockerfileError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            out[-1].instructions.append(ins)
    if not out:
        raise DockerfileError("no FROM")
    return out


def exec_form(ins: Instruction) -> list[str]:
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        raise DockerfileError(f"line {ins.line}: {ins.keyword}: use the JSON exec form") from None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise DockerfileError(f"line {ins.line}: {ins.keyword} must be a JSON list of strings")
    return value


def mount_options(ins: Instruction) -> list[dict[str, str]]:
    return [dict(kv.split("=", 1) for kv in m.split(",")) for m in ins.flag("mount")]


# -- .dockerignore -------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out)


def load_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        negate = s.startswith("!")
        s = s.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern_regex(os.path.normpath(s))))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory also
    matches everything below it."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def context_files(src: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> Iterator[Path]:
    paths = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for p in paths:
        if not ignored(p.relative_to(ROOT).as_posix(), rules):
            yield p


# -- the lint ------------------------------------------------------------------------------------

DIGEST_BASE = re.compile(
    r"(?:docker\.io/library/)?python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)@sha256:[0-9a-f]{64}"
)


@dataclass
class Dockerfile:
    directives: dict[str, str]
    global_args: dict[str, str]
    stages: list[Stage]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    directives, instructions = parse(DOCKERFILE.read_text())
    global_args = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        key, _, value = ins.args.partition("=")
        global_args[key] = value
    return Dockerfile(directives, global_args, stages(instructions))


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def daemonset_container() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def copy_instructions(stage: Stage) -> list[tuple[Instruction, list[str], str]]:
    out = []
    for ins in stage.instructions:
        if ins.keyword in ("COPY", "ADD"):
            *srcs, dest = shlex.split(ins.args)
            out.append((ins, srcs, dest))
    return out


def runs(stage: Stage) -> list[list[str]]:
    """Each RUN's commands (split at ``&&``), as argument lists."""
    out = []
    for ins in stage.instructions:
        if ins.keyword == "RUN":
            out += [shlex.split(cmd) for cmd in ins.args.split("&&")]
    return out


def test_parser_rejects_what_docker_rejects() -> None:
    for bad in ("FROM python:3.11.13-slim-bookworm\nRUNN echo\n",
                "FROM python:3.11.13-slim-bookworm\nCOPY --form=x a b\n",
                "FROM python:3.11.13-slim-bookworm\nRUN echo \\\n",
                "WORKDIR /x\nFROM python:3.11.13-slim-bookworm\n"):
        with pytest.raises(DockerfileError):
            stages(parse(bad)[1])
    ok = "# syntax=docker/dockerfile:1\nARG B=a:1\nFROM ${B} AS b\n# c\nRUN x \\\n  # inner\n  y\n"
    directives, ins = parse(ok)
    assert directives == {"syntax": "docker/dockerfile:1"}
    assert [(i.keyword, i.args) for i in ins] == [("ARG", "B=a:1"), ("FROM", "${B} AS b"),
                                                  ("RUN", "x y")]


def test_no_syntax_directive(dockerfile: Dockerfile) -> None:
    # `# syntax=` makes BuildKit pull a frontend image from a registry before building.
    assert dockerfile.directives == {}
    assert "syntax" not in DOCKERFILE.read_text().split("\n", 1)[0]


def test_base_is_a_build_argument_pinned_by_digest(dockerfile: Dockerfile) -> None:
    # Both stages on the same base: wheels built in one match the other's ABI, and the venv's
    # interpreter link resolves.
    assert {s.base for s in dockerfile.stages} == {"${BASE}"}
    m = DIGEST_BASE.fullmatch(dockerfile.global_args["BASE"])
    assert m, f"default base {dockerfile.global_args['BASE']!r}: python slim, x.y.z, by digest"
    required = str(pyproject()["project"]["requires-python"])
    assert required == ">=3.11" and (int(m.group(1)), int(m.group(2))) >= (3, 11)


def test_entrypoint_is_a_declared_console_script(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    entry = [i for i in final.instructions if i.keyword == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = exec_form(entry[0])
    scripts = pyproject()["project"]["scripts"]
    assert argv[0] in scripts and argv[1:] == ["supervisor"]
    assert scripts[argv[0]] == "wgpy.tools.cli:main"
    assert not [i for i in final.instructions if i.keyword == "CMD"]  # args come from the pod


def test_copy_sources_exist_and_survive_dockerignore(dockerfile: Dockerfile) -> None:
    rules = load_dockerignore(ROOT / ".dockerignore")
    names = [s.name for s in dockerfile.stages]
    for n, stage in enumerate(dockerfile.stages):
        for ins, srcs, _dest in copy_instructions(stage):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            if ins.flag("from"):
                assert ins.flag("from")[0] in names[:n], f"line {ins.line}: unknown stage"
                continue
            for src in srcs:
                path = ROOT / src
                assert path.exists(), f"line {ins.line}: {src} is not in the repository"
                assert not ignored(src.rstrip("/"), rules), f"{src} excluded by .dockerignore"
                assert list(context_files(path, rules)), f"{src}: nothing left after ignore"


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    rules = load_dockerignore(ROOT / ".dockerignore")
    for keep in ("pyproject.toml", "README.md", "wgpy/tools/cli.py", "wgpy/py.typed",
                 "wgpy/supervisor/config.py", "noise/__init__.py", "tun/__init__.py",
                 "requirements/runtime.lock"):
        assert not ignored(keep, rules), keep
    for drop in (".git/HEAD", "tests/test_deploy.py", ".venv/bin/python", "deploy/rbac.yaml",
                 "wgpy/__pycache__/cli.cpython-311.pyc", "wgpy.egg-info/PKG-INFO",
                 "benchmarks/results/x.json", ".hypothesis/examples/x", "Dockerfile",
                 "requirements/test.lock", "requirements/refresh"):
        assert ignored(drop, rules), drop


def lock_entries(path: Path) -> dict[str, list[str]]:
    """``name==version`` -> its hashes, for a pip requirements file in --require-hashes form."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req, *opts = line.split()
            assert "==" in req.split(";")[0], f"{path.name}: {req} is not pinned"
            out[req] = [o.removeprefix("--hash=") for o in opts if o.startswith("--hash=")]
    return out


def test_installs_come_from_the_hash_pinned_lock(dockerfile: Dockerfile) -> None:
    build = dockerfile.stages[0]
    pips = [argv[2:] for argv in runs(build) if argv[:2] == ["/opt/venv/bin/pip", "install"]]
    from_lock = [a for a in pips if "-r" in a]
    # The dependencies: exactly the lock, every file hash-checked.
    assert [a[a.index("-r") + 1] for a in from_lock] == ["requirements/runtime.lock"]
    assert "--require-hashes" in from_lock[0]
    # wgpy itself: from the build context only, with the lock's setuptools.
    (local,) = [a for a in pips if "-r" not in a]
    assert local[-1] == "." and {"--no-index", "--no-deps", "--no-build-isolation"} <= set(local)
    for argv in pips:
        assert not any("[" in a for a in argv), argv  # no extras ([test])
    # Neither the build backend nor pip ship.
    (uninstall,) = [argv for argv in runs(build) if argv[1:3] == ["uninstall", "--yes"]]
    assert {"setuptools", "wheel", "pip"} <= set(uninstall)
    entries = lock_entries(ROOT / "requirements" / "runtime.lock")
    assert "setuptools" in {r.split("==")[0] for r in entries}
    for req, hashes in entries.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), req


def test_build_system_bounds_match_the_locked_backend() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    (req,) = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    assert req.name == "setuptools"
    # `license = "MIT"` (a PEP 639 expression) needs setuptools 77 or later.
    assert pyproject()["project"]["license"] == "MIT"
    assert not req.specifier.contains("76.1") and req.specifier.contains("77.0")
    pins = dict(r.split("==") for r in lock_entries(ROOT / "requirements" / "runtime.lock"))
    assert Version(pins["setuptools"]) in req.specifier


def test_runtime_stage_copies_the_venv_only(dockerfile: Dockerfile) -> None:
    build, final = dockerfile.stages[0], dockerfile.stages[-1]
    assert len(dockerfile.stages) == 2 and build.name == "build"
    # No RUN at all in the final stage: no apt, no compiler, no pip; one COPY of /opt/venv.
    assert runs(final) == []
    assert [(i.flag("from"), i.args) for i in final.instructions if i.keyword == "COPY"] == [
        (["build"], "/opt/venv /opt/venv")
    ]
    # The synchronous kubernetes client removed in the build stage is never imported by wgpy.
    assert any("client/api" in " ".join(argv) and "-delete" in argv for argv in runs(build))


def test_wgpy_uses_only_the_asyncio_kubernetes_client() -> None:
    imported = set()
    for path in (ROOT / "wgpy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    k8s = {m for m in imported if m == "kubernetes" or m.startswith("kubernetes.")}
    assert k8s == {"kubernetes.aio"}, k8s


def test_precompiled_kubernetes_apis_are_the_ones_wgpy_calls(dockerfile: Dockerfile) -> None:
    used = set()
    for path in (ROOT / "wgpy").rglob("*.py"):
        used |= set(re.findall(r"\bk8s\.([A-Z]\w*Api)\b", path.read_text()))
    compiled = set()
    for argv in runs(dockerfile.stages[0]):
        for arg in argv:
            m = re.fullmatch(r".*/aio/client/api/(\w+)_api\.py", arg)
            if m and "compileall" in argv:
                compiled.add("".join(w.capitalize() for w in m.group(1).split("_")) + "Api")
    assert used and compiled == used


def test_exposed_port_is_the_daemonset_port(dockerfile: Dockerfile) -> None:
    exposed = [i.args for i in dockerfile.stages[-1].instructions if i.keyword == "EXPOSE"]
    assert exposed == [str(p["containerPort"]) for p in daemonset_container()["ports"]]


def test_image_settings_agree_with_the_daemonset_security_context(
    dockerfile: Dockerfile,
) -> None:
    """Static half of the agreement (tests/test_image.py runs the image under the manifest)."""
    final = dockerfile.stages[-1]
    sc = daemonset_container()["securityContext"]
    (user,) = [i.args for i in final.instructions if i.keyword == "USER"]
    assert {"root": 0, "0": 0}[user] == sc["runAsUser"] and sc["runAsNonRoot"] is False
    env = " ".join(i.args for i in final.instructions if i.keyword == "ENV")
    # readOnlyRootFilesystem: Python must not try to write .pyc files next to the sources.
    assert sc["readOnlyRootFilesystem"] is True and "PYTHONDONTWRITEBYTECODE=1" in env
    # Writable places come from the manifest's volumes, never from VOLUME in the image.
    assert not [i for i in final.instructions if i.keyword == "VOLUME"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False


def test_operator_guide_documents_every_build_argument(dockerfile: Dockerfile) -> None:
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    section = guide[guide.index("## 12. Building the image"):]
    args = dict(dockerfile.global_args)
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                key, _, value = ins.args.partition("=")
                args[key] = value
    assert set(args) == {"BASE", "BUILD_PACKAGES"}
    for name in args:
        assert f"| `{name}` |" in section, name
    digest = args["BASE"].split("@sha256:")[1]
    assert f"@sha256:{digest[:8]}" in section  # the documented default is the real one
    assert "docker build" in section and "podman build" in section
