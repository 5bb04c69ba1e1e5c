"""The container image's build stage builds, from exactly what it copies.

No Docker engine: the build stage's ``COPY`` lines in deploy/k8s/Dockerfile
are read (so this follows the Dockerfile when it changes), the paths they name
are copied from the repository, minus what .dockerignore keeps out of the
build context, into a temporary tree laid out as the stage's filesystem, and
the wheel that ``pip install .`` would install is built there, offline, with
the setuptools of this virtualenv. The wheel is then installed into a
directory of its own and its ``switchboard`` console script run with this
interpreter (for the dependencies), checking that ``switchboard`` is imported
from that directory and not from the checkout's editable install.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "k8s" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: The packages the image runs; their modules and data files must be in the wheel.
RUNTIME = ("switchboard.gateway", "switchboard.worker", "switchboard.fanout", "switchboard.shared")


# -- the Dockerfile -----------------------------------------------------------------------


@dataclass
class Copy:
    sources: list[str]
    dest: str  #: an absolute path in the stage's filesystem


@dataclass
class Stage:
    copies: list[Copy]
    project: str | None  #: the WORKDIR of the stage's `pip install`


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    if pending:
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def build_stages(text: str) -> list[Stage]:
    """Every stage but the last (the runtime stage, which only copies from them)."""
    stages: list[Stage] = []
    workdir = "/"
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            stages.append(Stage([], None))
            workdir = "/"
        elif not stages:
            continue  # ARG before the first FROM
        elif keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if any(o.startswith("--from=") for o in options):
                continue  # from another stage or image, not from the build context
            assert len(paths) >= 2, f"{keyword} {args}: expected sources and a destination"
            dest = posixpath.normpath(posixpath.join(workdir, paths[-1]))
            if paths[-1].endswith(("/", "/.", ".")) or len(paths) > 2:
                dest = dest.rstrip("/") + "/"  # into a directory
            stages[-1].copies.append(Copy(paths[:-1], dest))
        elif keyword == "RUN" and re.search(r"\bpip install\b", args):
            stages[-1].project = workdir
    assert len(stages) >= 2, f"{DOCKERFILE}: expected a build stage and a runtime stage"
    return stages[:-1]


# -- .dockerignore --------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (anchored at the context root; ``**`` spans
    directories) as a regular expression for a context-relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    if DOCKERIGNORE.exists():
        for line in DOCKERIGNORE.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            rules.append((keep, _pattern(posixpath.normpath(line.lstrip("!").strip()).lstrip("/"))))
    return rules


IGNORE = _ignore_rules()


def in_context(relative: str) -> bool:
    """Whether the build context holds this path (neither it nor a parent ignored)."""
    parts = PurePosixPath(relative).parts
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        excluded = False
        for keep, rule in IGNORE:  # the last matching line decides
            if rule.fullmatch(prefix):
                excluded = not keep
        if excluded:
            return False
    return True


def context_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and in_context(p.relative_to(ROOT).as_posix()))


# -- building the wheel -------------------------------------------------------------------


def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}): {shlex.join(command)}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", pytrace=False)
    return proc


def _copy_into(fs: Path, copy: Copy) -> None:
    for source in copy.sources:
        matches = sorted(ROOT.glob(source))
        assert matches, f"COPY {source}: nothing in the repository matches it"
        for path in matches:
            relative = path.relative_to(ROOT).as_posix()
            assert in_context(relative), f"COPY {source}: {relative} is excluded by .dockerignore"
            if path.is_dir():  # a directory's contents go into the destination
                target = fs / copy.dest.lstrip("/")
                for file in context_files(path):
                    into = target / file.relative_to(path)
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, into)
            else:
                target = fs / copy.dest.lstrip("/")
                if copy.dest.endswith("/") or target.is_dir():
                    target = target / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


@dataclass
class Image:
    project: Path
    wheel: Path
    names: set[str]
    target: Path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    build_system = PYPROJECT["build-system"]["requires"]
    for line in build_system:  # built offline with this venv's backend: it must be the one asked for
        requirement = Requirement(line)
        try:
            have = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed in {sys.prefix} (`make install`)", pytrace=False)
        assert requirement.specifier.contains(have, prereleases=True), (
            f"{sys.prefix} has {requirement.name} {have}, pyproject.toml builds with {line} (`make install`)")

    stages = build_stages(DOCKERFILE.read_text())
    builders = [s for s in stages if s.project is not None]
    assert len(builders) == 1, f"{DOCKERFILE}: expected one build stage running `pip install`"
    stage = builders[0]
    assert stage.copies, f"{DOCKERFILE}: the build stage copies nothing from the context"

    base = tmp_path_factory.mktemp("image")
    fs = base / "fs"  # the build stage's filesystem root
    for copy in stage.copies:
        _copy_into(fs, copy)
    project = fs / stage.project.lstrip("/")
    assert (project / "pyproject.toml").exists(), f"the build stage has no pyproject.toml in {stage.project}"

    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", str(wheels), str(project)], "building the wheel", cwd=base)
    built = sorted(wheels.glob("switchboard-*.whl"))
    assert len(built) == 1, f"expected one switchboard wheel, got {[w.name for w in wheels.iterdir()]}"
    with zipfile.ZipFile(built[0]) as archive:
        names = set(archive.namelist())

    target = base / "installed"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
          str(built[0])], "installing the wheel", cwd=base)
    return Image(project, built[0], names, target)


# -- the tests --------------------------------------------------------------------------------


def test_the_build_stage_copies_the_package_sources():
    stage = next(s for s in build_stages(DOCKERFILE.read_text()) if s.project is not None)
    copied = {source for copy in stage.copies for source in copy.sources}
    assert {"pyproject.toml", "shared", "services"} <= copied


def test_the_wheel_has_the_services_and_not_the_benchmarks(image: Image):
    for package in ("switchboard", *RUNTIME):
        assert package.replace(".", "/") + "/__init__.py" in image.names, package
    bench = sorted(n for n in image.names if "bench" in PurePosixPath(n).parts)
    assert not bench, f"benchmark files in the runtime wheel: {bench}"
    assert not any(n.startswith(("tests/", "switchboard/tests/")) for n in image.names)


def test_the_wheel_has_every_file_of_the_package_directories(image: Image):
    """Modules and data files (Lua scripts, say): everything under the package
    directories pyproject.toml maps, apart from caches, is installed."""
    package_dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    by_depth = sorted(package_dirs.items(), key=lambda item: -len(item[1]))
    wanted = {}
    for top in ("shared", "services"):
        for file in context_files(ROOT / top):
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            relative = file.relative_to(ROOT).as_posix()
            package, directory = next((p, d) for p, d in by_depth if relative.startswith(d.rstrip("/") + "/"))
            wanted[relative] = package.replace(".", "/") + relative[len(directory.rstrip("/")):]
    missing = sorted(f"{source} (as {name})" for source, name in wanted.items() if name not in image.names)
    assert not missing, f"not in the wheel (a data file needs [tool.setuptools.package-data]): {missing}"


def test_the_installed_command_runs_from_the_wheel(image: Image, tmp_path: Path):
    script = image.target / "bin" / "switchboard"
    assert script.exists(), f"the wheel installs no console script: {sorted(os.listdir(image.target))}"
    # The console script itself, with this interpreter (the dependencies) and
    # only the installed directory added to the path; then where it came from.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "else:\n"
        "    status = 0\n"
        "import switchboard, switchboard.cli\n"
        "print('switchboard from', switchboard.__file__)\n"
        "print('cli from', switchboard.cli.__file__)\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(image.target)}
    run = _run([sys.executable, "-c", probe], "switchboard --help from the wheel", cwd=tmp_path, env=env)
    origins = dict(line.split(" from ", 1) for line in run.stdout.splitlines() if " from /" in line)
    assert set(origins) == {"switchboard", "cli"}, run.stdout
    for module, file in origins.items():
        assert Path(file).resolve().is_relative_to(image.target.resolve()), (
            f"{module} was imported from {file}, not from the installed wheel in {image.target}")
    for command in ("run", "gateway", "worker", "fanout", "token", "deadletters"):
        assert re.search(rf"\b{command}\b", run.stdout), (command, run.stdout)
    assert "bench" not in run.stdout
