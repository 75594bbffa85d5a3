"""The ``Dockerfile`` without a container engine: a small parser and linter (valid
instructions, base pinned by exact version, the ENTRYPOINT is a declared console script, COPY
sources exist and survive ``.dockerignore``, no compiler in the runtime stage), then the
Dockerfile's own ``pip wheel`` / ``pip install`` commands replayed in a fresh venv, and the
entrypoint run.

The replay is offline by default: the venv sees the system's site-packages for wgpy's
dependencies, and the test checks those satisfy the installed wgpy's declared requirements.
``WGPY_TEST_PYPI=1`` also replays the commands unchanged in an isolated venv against PyPI
(about 20 s with a warm pip cache).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
WHEELS = "/wheels"  # where the Dockerfile keeps wheels between stages

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


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    directives, instructions = parse(DOCKERFILE.read_text())
    assert directives.get("syntax", "").startswith("docker/dockerfile:1")  # RUN --mount
    return stages(instructions)


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def copy_instructions(stage: Stage) -> list[tuple[Instruction, list[str], str]]:
    out = []
    for ins in stage.instructions:
        if ins.keyword in ("COPY", "ADD"):
            *srcs, dest = shlex.split(ins.args)
            out.append((ins, srcs, dest))
    return out


def test_parser_rejects_what_docker_rejects() -> None:
    for bad in ("FROM python:3.11.13-slim-bookworm\nRUNN echo\n",
                "FROM python:3.11.13-slim-bookworm\nCOPY --form=x a b\n",
                "FROM python:3.11.13-slim-bookworm\nRUN echo \\\n",
                "WORKDIR /x\nFROM python:3.11.13-slim-bookworm\n"):
        with pytest.raises(DockerfileError):
            stages(parse(bad)[1])
    ok = "# syntax=docker/dockerfile:1\nFROM a:1.2.3 AS b\n# c\nRUN x \\\n  # inner\n  y\n"
    directives, ins = parse(ok)
    assert directives == {"syntax": "docker/dockerfile:1"}
    assert [(i.keyword, i.args) for i in ins] == [("FROM", "a:1.2.3 AS b"), ("RUN", "x y")]


def test_base_images_pinned_by_exact_version(dockerfile: list[Stage]) -> None:
    bases = {s.base for s in dockerfile}
    # One base for both stages: wheels compiled in the build stage match the runtime ABI.
    assert len(bases) == 1
    (base,) = bases
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?",
                     base)
    assert m, f"base {base!r} is not a slim Python image pinned to an exact x.y.z tag"
    required = str(pyproject()["project"]["requires-python"])  # type: ignore[index]
    assert required == ">=3.11" and (int(m.group(1)), int(m.group(2))) >= (3, 11)


def test_entrypoint_is_a_declared_console_script(dockerfile: list[Stage]) -> None:
    final = dockerfile[-1]
    entry = [i for i in final.instructions if i.keyword == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = exec_form(entry[0])
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    assert argv[0] in scripts and argv[1:] == ["supervisor"]
    assert scripts[argv[0]] == "wgpy.cli:main"
    assert not [i for i in final.instructions if i.keyword == "CMD"]  # args come from the pod


def test_copy_sources_exist_and_survive_dockerignore(dockerfile: list[Stage]) -> None:
    rules = load_dockerignore(ROOT / ".dockerignore")
    names = [s.name for s in dockerfile]
    for n, stage in enumerate(dockerfile):
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
        for ins in stage.instructions:
            for mount in mount_options(ins):
                if "from" in mount:
                    assert mount["from"] in names[:n]


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    rules = load_dockerignore(ROOT / ".dockerignore")
    for keep in ("pyproject.toml", "README.md", "wgpy/cli.py", "wgpy/py.typed",
                 "wgpy/supervisor/config.py", "noise/__init__.py", "tun/__init__.py"):
        assert not ignored(keep, rules), keep
    for drop in (".git/HEAD", "tests/test_deploy.py", ".venv/bin/python", "deploy/rbac.yaml",
                 "wgpy/__pycache__/cli.cpython-311.pyc", "wgpy.egg-info/PKG-INFO",
                 "benchmarks/results/x.json", ".hypothesis/examples/x", "Dockerfile"):
        assert ignored(drop, rules), drop


def test_runtime_stage_has_no_build_tools_and_installs_wheels_only(
    dockerfile: list[Stage],
) -> None:
    build, final = dockerfile[0], dockerfile[-1]
    assert len(dockerfile) == 2 and build.name == "build"
    final_runs = [i.args for i in final.instructions if i.keyword == "RUN"]
    for run in final_runs:
        assert "apt-get" not in run and "gcc" not in run
    installs = [r for r in final_runs if "pip install" in r]
    assert len(installs) == 1
    argv = shlex.split(installs[0])
    assert "--no-index" in argv and "--find-links" in argv  # only the build stage's wheels
    assert "wgpy" in argv and not any("[" in a for a in argv)  # no extras ([test])
    # The wheels come in through a bind mount: no layer keeps them.
    (run_ins,) = [i for i in final.instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert {"type": "bind", "from": "build", "source": WHEELS, "target": WHEELS} in (
        mount_options(run_ins)
    )
    wheel_runs = [i.args for i in build.instructions if "pip wheel" in i.args]
    assert len(wheel_runs) == 1 and not any("[" in a for a in shlex.split(wheel_runs[0]))


def test_exposed_port_is_the_daemonset_port(dockerfile: list[Stage]) -> None:
    exposed = [i.args for i in dockerfile[-1].instructions if i.keyword == "EXPOSE"]
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    assert exposed == [str(p["containerPort"]) for p in container["ports"]]


# -- replay the install in a fresh venv ----------------------------------------------------------


def build_context(stage: Stage, dest_root: Path) -> Path:
    """What the build stage's COPY instructions put under its WORKDIR."""
    rules = load_dockerignore(ROOT / ".dockerignore")
    for _ins, srcs, dest in copy_instructions(stage):
        for src in srcs:
            base = ROOT / src
            for f in context_files(base, rules):
                rel = f.relative_to(base) if base.is_dir() else Path(f.name)
                target = dest_root / dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    return dest_root


def pip_argv(run: str, venv: Path, wheels: Path) -> list[str]:
    argv = shlex.split(run)
    assert argv[0] == "pip", run
    return [str(venv / "bin" / "python"), "-m", "pip",
            *[str(wheels) if a == WHEELS else a for a in argv[1:]]]


def run_checked(argv: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER")}
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env, check=False)
    assert res.returncode == 0, f"{argv}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout


@dataclass
class Installed:
    venv: Path
    cwd: Path


def replay(dockerfile: list[Stage], tmp: Path, *, offline_deps: bool) -> Installed:
    """Run the Dockerfile's ``pip wheel`` and ``pip install`` in a new venv.

    ``offline_deps``: build and install wgpy alone (``--no-deps``) and let the venv see the
    running interpreter's site-packages for the dependencies. pip still fetches the build
    backend (setuptools) into its isolated build environment, as ``docker build`` does.
    """
    build, final = dockerfile[0], dockerfile[-1]
    ctx = build_context(build, tmp / "src")
    wheels = tmp / "wheels"
    venv = tmp / "venv"
    run_checked([sys.executable, "-m", "venv", str(venv)], tmp)
    if offline_deps:
        purelib = Path(run_checked([str(venv / "bin" / "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   tmp).strip())
        # Plain path lines: the dependencies become importable, but .pth hooks of the running
        # environment (such as an editable wgpy) are not executed in the venv.
        (purelib / "zz_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (wheel_run,) = [i.args for i in build.instructions if "pip wheel" in i.args]
    extra = ["--no-deps"] if offline_deps else []
    run_checked([*pip_argv(wheel_run, venv, wheels), *extra], ctx, timeout=240)
    (install_run,) = [i.args for i in final.instructions if "pip install" in i.args]
    # wgpy itself must come from the wheel just built, even if the running environment has
    # it installed (editable) and pip would otherwise call it already satisfied.
    extra = ["--no-deps", "--ignore-installed"] if offline_deps else []
    run_checked([*pip_argv(install_run, venv, wheels), *extra], tmp, timeout=240)
    if offline_deps:
        assert [w.name.split("-")[0] for w in wheels.glob("*.whl")] == ["wgpy"]
    return Installed(venv, tmp)


@pytest.fixture(scope="module")
def installed(
    dockerfile: list[Stage], tmp_path_factory: pytest.TempPathFactory
) -> Installed:
    return replay(dockerfile, tmp_path_factory.mktemp("docker-replay"), offline_deps=True)


def test_pip_argv_rewrites_only_the_wheel_dir(tmp_path: Path) -> None:
    argv = pip_argv("pip install --no-index --find-links /wheels wgpy", tmp_path, tmp_path / "w")
    assert argv == [str(tmp_path / "bin" / "python"), "-m", "pip", "install", "--no-index",
                    "--find-links", str(tmp_path / "w"), "wgpy"]


def test_installed_wgpy_comes_from_the_built_wheel(installed: Installed) -> None:
    out = run_checked([str(installed.venv / "bin" / "python"), "-c",
                       "import wgpy, noise, tun; print(wgpy.__file__)"], installed.cwd)
    assert Path(out.strip()).is_relative_to(installed.venv)
    typed = run_checked([str(installed.venv / "bin" / "python"), "-c",
                         "import importlib.resources as r; "
                         "print(r.files('wgpy').joinpath('py.typed').is_file())"], installed.cwd)
    assert typed.strip() == "True"


def test_declared_dependencies_are_the_runtime_set_and_satisfied(installed: Installed) -> None:
    script = (
        "import importlib.metadata as md, json\n"
        "from packaging.requirements import Requirement\n"
        "reqs = [Requirement(r) for r in md.requires('wgpy')]\n"
        "runtime = [r for r in reqs if r.marker is None]\n"
        "bad = [str(r) for r in runtime if md.version(r.name) not in r.specifier]\n"
        "print(json.dumps({'runtime': sorted(str(r) for r in runtime), 'bad': bad}))\n"
    )
    out = json.loads(run_checked([str(installed.venv / "bin" / "python"), "-c", script],
                                 installed.cwd))
    declared = pyproject()["project"]["dependencies"]  # type: ignore[index]
    assert sorted(out["runtime"]) == sorted(d.replace(" ", "") for d in declared)
    assert out["bad"] == []


def test_entrypoint_runs(installed: Installed, dockerfile: list[Stage]) -> None:
    (entry,) = [i for i in dockerfile[-1].instructions if i.keyword == "ENTRYPOINT"]
    script = installed.venv / "bin" / exec_form(entry)[0]
    assert script.is_file()
    out = run_checked([str(script), "--help"], installed.cwd)
    assert "Usage: wgpy" in out and "allowed-ips" in out


def test_entrypoint_supervisor_help(installed: Installed, dockerfile: list[Stage]) -> None:
    from wgpy import cli

    assert cli.find("supervisor") is not None, "`wgpy supervisor` is not registered"
    (entry,) = [i for i in dockerfile[-1].instructions if i.keyword == "ENTRYPOINT"]
    argv = exec_form(entry)
    out = run_checked([str(installed.venv / "bin" / argv[0]), *argv[1:], "--help"],
                      installed.cwd)
    assert "--http-port" in out


@pytest.mark.skipif(os.environ.get("WGPY_TEST_PYPI") != "1",
                    reason="set WGPY_TEST_PYPI=1 to replay the install against PyPI")
def test_full_install_from_pypi_in_an_isolated_venv(
    dockerfile: list[Stage], tmp_path: Path
) -> None:
    inst = replay(dockerfile, tmp_path, offline_deps=False)
    out = run_checked([str(inst.venv / "bin" / "wgpy"), "--help"], inst.cwd)
    assert "Usage: wgpy" in out
