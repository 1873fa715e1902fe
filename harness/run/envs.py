"""Per-backend environments: each backend's workers in a virtual environment of their own.

``fwbench run --envs isolated`` runs every worker with its backend's interpreter, so each
framework is installed at the versions its users run, whatever the others need (MindSpore on
NumPy 1.x, JAX and Flax on NumPy 2). A backend may carry a version, ``jax==0.7.1``: it runs
as the labelled backend ``jax@0.7.1`` in an env of its own (a version sweep).

- **Requirement set**: the backend's file in ``requirements/`` (``requirements/<name>.txt``,
  else ``requirements/<first required distribution>.txt``, so variants share their base's
  file: ``torch-compile`` uses ``torch.txt``); a plugin's ``Backend.requirements`` plus its own
  distribution where the repo has no file for it; a version override pins the backend's main
  distribution (and the ones released with it, ``LOCKSTEP``); plus fwbench's core
  requirements (``pyproject.toml``) and the Python version.
- **Key**: sha256 of that full set. Envs are named ``<family>[-<version>]-<key[:12]>``, so a
  changed pin, core requirement or Python makes a new env; the old one shows as ``stale``.
- **Where**: ``platformdirs.user_cache_dir("fwbench")/envs``, moved by ``FWBENCH_ENVS_DIR``
  or ``--envs-dir``.
- **How**: ``python -m venv``, then one pip call: ``pip install -e <source tree> -r
  <requirement set>`` (pip finds this machine's local wheels). fwbench is installed
  *editable*: the worker in the env must run exactly the harness and adapter code of the
  runner (the worker protocol, the record schema and the measurement code), and run.json's
  adapter hashes are computed from that source tree; a copy would go stale with the first
  edit. The source tree is part of the key. ``fwbench-env.json`` (the manifest, written last)
  marks a complete env and records its requirement set, packages, size and creation time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import labels
from fwbench.harness.catalog.labels import BackendLabel
from fwbench.harness.errors import FwbenchError

ENVS_VAR = "FWBENCH_ENVS_DIR"
MANIFEST = "fwbench-env.json"
MANIFEST_SCHEMA = 1
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # harness/run/ -> the source tree
REQUIREMENTS_DIR = SOURCE_ROOT / "requirements"
# Distributions released in lockstep with a backend's main one: a version override pins them
# to the same version (``jax==0.7.1`` pins jaxlib 0.7.1 too).
LOCKSTEP: dict[str, tuple[str, ...]] = {"jax": ("jaxlib",)}
MODES = ("current", "isolated")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------ requirement sets


@dataclass(frozen=True)
class RequirementSet:
    """Everything that goes into one backend's env, and its key."""

    backend: str  # label of the backend it was made for (jax, jax@0.7.1)
    family: str  # the file's stem (torch for torch and torch-compile) or the plugin backend
    origin: str  # where the backend's lines came from
    lines: tuple[str, ...]  # the backend's requirement lines, the override applied
    core: tuple[str, ...]  # fwbench's core requirements (pyproject.toml)
    source: str  # the fwbench source tree installed (editable) into the env
    python: str  # major.minor of the interpreter that builds the env
    version: str | None = None  # the override, if any

    @property
    def key(self) -> str:
        material = {"requirements": sorted(self.lines), "core": sorted(self.core),
                    "fwbench": f"-e {self.source}", "python": self.python}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        middle = f"-{self.version}" if self.version else ""
        return f"{self.family}{middle}-{self.key[:12]}"

    def text(self) -> str:
        """The backend's lines as the requirements file pip is given."""
        return (f"# fwbench env for {self.backend} (from {self.origin}); key {self.key}\n"
                + "".join(line + "\n" for line in self.lines))


def source_root() -> Path:
    """fwbench's source tree (it is installed into every env); refused when fwbench runs
    from a plain (non-editable) install, which has none."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file() or not (SOURCE_ROOT / "harness").is_dir():
        raise FwbenchError(f"per-backend envs need fwbench's source tree, and {SOURCE_ROOT} is not "
                           "one: install fwbench from a checkout with pip install -e .")
    return SOURCE_ROOT


def core_requirements(root: Path | None = None) -> tuple[str, ...]:
    """``[project].dependencies`` of the source tree's pyproject.toml."""
    path = (root or source_root()) / "pyproject.toml"
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        deps = tomllib.load(f).get("project", {}).get("dependencies", [])
    return tuple(" ".join(d.split()) for d in deps)


def read_requirements(path: Path) -> tuple[str, ...]:
    """A requirements file's lines, comments and blanks dropped, whitespace normalised."""
    out = []
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.split()[0] in ("-r", "-c", "--requirement", "--constraint", "-e", "--editable"):
            raise FwbenchError(f"{path}: {line.split()[0]} is not supported in a backend's "
                               "requirement file (list the requirements themselves)")
        out.append(" ".join(line.split()))
    return tuple(out)


def _requirement_name(line: str) -> str | None:
    if line.startswith("-"):
        return None
    m = _NAME.match(line.split("@")[0] if " @ " in line else line)
    return canonical(m.group(1)) if m else None


def override(lines: Iterable[str], dist: str, version: str) -> tuple[str, ...]:
    """``lines`` with ``dist`` and the distributions released with it (``LOCKSTEP``) pinned
    to ``version`` (appended if the file does not name it); every other pin is kept."""
    group = {canonical(dist), *(canonical(d) for d in LOCKSTEP.get(canonical(dist), ()))}
    out, seen = [], set()
    for line in lines:
        name = _requirement_name(line)
        if name in group:
            m = _NAME.match(line)
            assert m is not None
            out.append(f"{m.group(1)}{m.group(2) or ''}=={version}")
            seen.add(name)
        else:
            out.append(line)
    if canonical(dist) not in seen:
        out.append(f"{dist}=={version}")
    return tuple(out)


def _plugin_distribution(backend: Backend) -> str | None:
    """A plugin's own distribution as pip can install it again: where it was installed from
    (its PEP 610 direct URL: a local folder, a file, a VCS URL) or ``name==version``."""
    parts = backend.source.split()
    if len(parts) < 2 or parts[0] != "plugin":
        return None
    import importlib.metadata as md

    dist_name = parts[1]
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        return None
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            url = json.loads(direct).get("url")
        except json.JSONDecodeError:
            url = None
        if url:
            return f"{dist_name} @ {url}"
    return f"{dist_name}=={dist.version}"


def requirement_set(backend: Backend, version: str | None = None,
                    requirements_dir: Path | None = None, root: Path | None = None) -> RequirementSet:
    """The full requirement set of ``backend`` (a base backend, not a label), with
    ``version`` overriding its main distribution's pin."""
    folder = requirements_dir or REQUIREMENTS_DIR
    root = root or source_root()
    base = labels.base(backend.name)
    plugin = backend.source != "built-in"
    lines: tuple[str, ...] | None = None
    candidates = [base] + ([backend.requires[0]] if backend.requires and not plugin else [])
    for stem in candidates:
        path = folder / f"{stem}.txt"
        if path.is_file():
            family, origin, lines = stem, str(path.relative_to(root) if path.is_relative_to(root)
                                              else path), read_requirements(path)
            break
    if lines is None and (backend.requirements or plugin):
        own = _plugin_distribution(backend)
        family, origin = base, f"Backend.requirements of {backend.source}"
        lines = tuple(" ".join(r.split()) for r in backend.requirements) + ((own,) if own else ())
    if not lines:
        raise FwbenchError(f"backend {base!r} has no requirement set for an env: add "
                           f"requirements/{base}.txt, or declare Backend.requirements in its plugin")
    if version is not None:
        if not backend.requires:
            raise FwbenchError(f"backend {base!r} names no distribution (Backend.requires) to pin "
                               f"to {version}")
        lines = override(lines, backend.requires[0], version)
    return RequirementSet(BackendLabel(base, version).name, family, origin, lines, core_requirements(root),
                          str(root), f"{sys.version_info.major}.{sys.version_info.minor}", version)


def for_label(name: str, known: dict[str, Backend], requirements_dir: Path | None = None) -> RequirementSet:
    """The requirement set of a backend as named in a run (``jax@0.7.1``, ``torch#2``)."""
    lab = BackendLabel.parse(name)
    base, version = lab.base, lab.version
    if base not in known:
        raise FwbenchError(f"unknown backend {base!r}; choose from {', '.join(known)}")
    return requirement_set(known[base], version, requirements_dir)


# ------------------------------------------------------------------------ the envs


def envs_dir(override_dir: str | Path | None = None) -> Path:
    """Where envs live: ``--envs-dir``, else ``FWBENCH_ENVS_DIR``, else the user cache."""
    if override_dir:
        return Path(override_dir).expanduser()
    if os.environ.get(ENVS_VAR):
        return Path(os.environ[ENVS_VAR]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fwbench")) / "envs"


@dataclass
class Env:
    """One env folder; ``manifest`` is None while it is incomplete (or not fwbench's)."""

    path: Path
    manifest: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.python.exists()

    @property
    def key(self) -> str:
        return (self.manifest or {}).get("key", "")

    def packages(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """The env's distributions (all, or those of ``names`` it has), as installed."""
        pkgs = (self.manifest or {}).get("packages", {})
        if names is None:
            return dict(pkgs)
        by_canon = {canonical(k): (k, v) for k, v in pkgs.items()}
        return dict(by_canon[canonical(n)] for n in names if canonical(n) in by_canon)

    def info(self):
        """This env as run.json records it (``records.EnvInfo``)."""
        from fwbench.harness import records

        m = self.manifest or {}
        return records.EnvInfo(name=self.name, path=str(self.path), key=m.get("key", ""),
                               python=m.get("python", ""), packages=dict(m.get("packages", {})),
                               requirements=list(m.get("requirements", [])))


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == MANIFEST_SCHEMA else None


def open_env(path: Path) -> Env:
    return Env(path, _read_manifest(path))


def find(rs: RequirementSet, root: Path) -> Env | None:
    """The complete env of ``rs`` under ``root``, or None."""
    env = open_env(root / rs.name)
    return env if env.complete and env.key == rs.key else None


def is_env_folder(path: Path) -> bool:
    """A folder fwbench made (complete, or left incomplete by a failed creation)."""
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / "pyvenv.cfg").is_file()
                              and (path / "requirements.txt").is_file())


def all_envs(root: Path) -> list[Env]:
    if not root.is_dir():
        return []
    return [open_env(p) for p in sorted(root.iterdir()) if is_env_folder(p)]


def disk_usage(path: Path) -> int:
    """Bytes the folder takes on disk (allocated blocks; hard links counted once)."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


_PROBE = ("import importlib.metadata as md, json, sys; "
          "print(json.dumps({'python': sys.version.split()[0], 'prefix': sys.prefix, "
          "'packages': dict(sorted((d.metadata['Name'], d.version) for d in md.distributions() "
          "if d.metadata['Name']))}))")


def condense(line: str) -> str | None:
    """One of pip's output lines as a short progress note, or None for noise."""
    line = line.strip()
    m = re.match(r"(Collecting|Downloading|Processing|Obtaining) (\S+)(.*)", line)
    if m:
        what = m.group(2)
        wheel = re.match(r"(.*/)?([^/-]+)-([^-]+)-.*\.whl$", what)
        if m.group(1) == "Processing" and wheel:  # a wheel from a local folder or index
            return f"collecting {wheel.group(2)}=={wheel.group(3)} (from {wheel.group(1) or './'})"
        if m.group(1) == "Downloading":
            what = what.rsplit("/", 1)[-1]
            size = re.search(r"\(([^)]+)\)", m.group(3))
            return f"downloading {what}" + (f" ({size.group(1)})" if size else "")
        return f"{m.group(1).lower()} {what}"
    if line.startswith("Installing collected packages:"):
        n = len(line.split(":", 1)[1].split(","))
        return f"installing {n} packages"
    if line.startswith(("Building", "Getting requirements", "Preparing", "Successfully installed")):
        if line.startswith("Successfully installed"):
            return f"installed {len(line.split()) - 2} packages"
        return line.rstrip(".: ").lower()
    return None


def _pip_install(rs: RequirementSet, root: Path, path: Path, req: Path, env: dict[str, str],
                 on_line: Callable[[str], None]) -> None:
    """pip installs fwbench's core and ``req`` into the env at ``path``, its output to
    ``pip.log`` there and to ``on_line``; a failure removes the env, keeps the log as
    ``<name>.failed.log`` and is one ``FwbenchError`` line."""
    log_path = path / "pip.log"
    cmd = [str(path / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
           "--disable-pip-version-check", "-e", rs.source, "-r", str(req)]
    errors: list[str] = []
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env, cwd=str(path))
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("ERROR:"):
                    errors.append(" ".join(line.split()))
                on_line(line.rstrip("\n"))
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        failed = root / f"{rs.name}.failed.log"
        shutil.copyfile(log_path, failed)
        shutil.rmtree(path, ignore_errors=True)
        why = errors[0] if errors else f"pip exited with code {proc.returncode}"
        raise FwbenchError(f"pip could not build the env of {rs.backend}: {why[:300]} "
                           f"(full log: {failed})")


def create(rs: RequirementSet, root: Path, on_line: Callable[[str], None] = lambda s: None) -> Env:
    """Build the env of ``rs`` under ``root`` (or return the complete one already there).

    ``on_line`` gets pip's output lines as they come (its full log stays in ``pip.log`` in
    the env). A failed pip is one ``FwbenchError`` line; the half-built env is removed and
    its log kept as ``<name>.failed.log`` next to it."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{rs.name}.lock")):
        found = find(rs, root)
        if found is not None:
            return found
        path = root / rs.name
        if path.exists():  # incomplete: a creation that died
            shutil.rmtree(path)
        t0 = time.monotonic()
        on_line(f"python -m venv {path}")
        made = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            last = (made.stderr.strip().splitlines() or ["?"])[-1]
            raise FwbenchError(f"cannot create a virtual environment in {path}: {last}")
        req = path / "requirements.txt"
        req.write_text(rs.text())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(VIRTUAL_ENV=str(path), PYTHONUNBUFFERED="1")
        _pip_install(rs, root, path, req, env, on_line)
        probe = subprocess.run([str(path / "bin" / "python"), "-c", _PROBE], capture_output=True,
                               text=True, env=env)
        if probe.returncode != 0:
            raise FwbenchError(f"the env's interpreter {path / 'bin' / 'python'} does not start: "
                               f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        found_out = json.loads(probe.stdout)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "name": rs.name,
            "key": rs.key,
            "backend": rs.backend,
            "family": rs.family,
            "version": rs.version,
            "origin": rs.origin,
            "requirements": list(rs.lines),
            "core": list(rs.core),
            "source": rs.source,
            "python": found_out["python"],
            "packages": found_out["packages"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "create_s": round(time.monotonic() - t0, 1),
            "size_bytes": disk_usage(path),
        }
        tmp = path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path / MANIFEST)  # last: an env with a manifest is complete
        return open_env(path)


def remove(env: Env) -> None:
    if not is_env_folder(env.path):
        raise FwbenchError(f"{env.path} is not an fwbench env; not removed")
    shutil.rmtree(env.path)


# ------------------------------------------------------------------- runs and checks


def backend_requirement_sets(known: dict[str, Backend], requirements_dir: Path | None = None
                             ) -> dict[str, RequirementSet]:
    """Today's requirement set of every registered backend that has one."""
    out = {}
    for name, backend in known.items():
        try:
            out[name] = requirement_set(backend, None, requirements_dir)
        except FwbenchError:
            continue
    return out


def resolve(names: Iterable[str], known: dict[str, Backend], root: Path, isolated: bool,
            create_missing: Callable[[list[str]], None] | None = None,
            envs_dir_option: str | None = None) -> dict[str, Env]:
    """The env of every backend in ``names`` that runs isolated (all of them with
    ``isolated``; else the versioned ones, ``jax@0.7.1``). Missing envs are created through
    ``create_missing`` (``--create-envs``), else refused with the one command that makes them."""
    wanted = [n for n in names if isolated or BackendLabel.parse(n).version is not None]
    sets = {n: for_label(n, known) for n in wanted}
    missing = [n for n in wanted if find(sets[n], root) is None]
    if missing and create_missing is not None:
        create_missing(missing)
        missing = [n for n in wanted if find(sets[n], root) is None]
    if missing:
        specs = list(dict.fromkeys(BackendLabel.parse(n).option for n in missing))
        where = f" --envs-dir {envs_dir_option}" if envs_dir_option else ""
        raise FwbenchError(f"no env for backend(s) {', '.join(dict.fromkeys(labels.uncopied(n) for n in missing))} "
                           f"in {root}; create them with: fwbench envs create{where} "
                           f"--backends {','.join(specs)}")
    out = {}
    for n in wanted:
        env = find(sets[n], root)
        assert env is not None
        out[n] = env
    return out


def summary(env: Env, names: Iterable[str] = ()) -> str:
    """``jax 0.10.2, jaxlib 0.10.2, optax 0.2.8, numpy 2.4.6``: the packages that matter."""
    from fwbench.harness.measure import environment

    wanted = list(dict.fromkeys([*(_requirement_name(r) or "" for r in (env.manifest or {}).get(
        "requirements", [])), *names, *environment.PACKAGES]))
    pkgs = env.packages([w for w in wanted if w and w != "fwbench"])
    return ", ".join(f"{k} {v}" for k, v in pkgs.items())
