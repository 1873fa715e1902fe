"""``fwbench envs create | list | remove``: the per-backend virtual environments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fwbench.harness.adapter import Backend
from fwbench.harness.catalog.labels import BackendLabel
from fwbench.harness.cli.common import (ENVS_DIR_HELP, HELP, backend_names, create_envs,
                                        discover_backends, group_help, app, console)
from fwbench.harness.errors import FwbenchError
from fwbench.harness.run import envs

envs_app = typer.Typer(**HELP, help="Per-backend virtual environments (fwbench run --envs isolated).")
app.add_typer(envs_app, name="envs", short_help="Per-backend virtual environments: create, list, remove.")
envs_app.callback()(group_help)


@envs_app.command("create", short_help="Create each backend's env (venv, its requirements, fwbench).")
def envs_create_cmd(
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends, NAME or NAME==VERSION (default: the five base backends)."),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=ENVS_DIR_HELP),
) -> None:
    """Create each backend's env: a venv with its requirement file and fwbench's core (pip)."""
    known = discover_backends()
    names = (backend_names(backends, known) if backends is not None
             else [n for n, b in known.items() if b.source == "built-in" and not b.options])
    create_envs(names, known, envs.envs_dir(envs_dir))


def _env_status(env, known: dict[str, Backend]) -> str:
    """current: today's requirement set of its backend; stale: an older one; incomplete."""
    if not env.complete:
        return "incomplete"
    lab = BackendLabel.parse(env.manifest.get("backend", ""))
    if lab.base not in known:
        return "stale"
    try:
        rs = envs.requirement_set(known[lab.base], lab.version)
    except FwbenchError:
        return "stale"
    return "current" if rs.key == env.key else "stale"


@envs_app.command("list", short_help="The envs: status, packages, size, creation, path.")
def envs_list_cmd(
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=ENVS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The envs: name, backend, status, packages, size on disk, creation time, path and key."""
    root = envs.envs_dir(envs_dir)
    known = discover_backends()
    rows = []
    for env in envs.all_envs(root):
        m = env.manifest or {}
        rows.append({"name": env.name, "backend": m.get("backend"), "status": _env_status(env, known),
                     "path": str(env.path), "key": env.key, "python": m.get("python"),
                     "packages": envs.summary(env), "size_bytes": envs.disk_usage(env.path),
                     "created": m.get("created"), "create_s": m.get("create_s")})
    if as_json:
        console.print_json(json.dumps({"envs_dir": str(root), "envs": rows}))
        return
    if not rows:
        console.print(f"no envs in {root}; create them with: fwbench envs create", highlight=False)
        return
    # 80 columns: one line per env (the name carries the backend and the key's head), its
    # packages indented below; --json has every field
    width = max(len(r["name"]) for r in rows)
    console.print(f"envs in {root}", highlight=False)
    console.print(f"{'name':<{width}}  {'status':<8} {'size':>10}  created", style="bold", highlight=False)
    for r in rows:
        created = (r["created"] or "?")[:10] + (f" ({r['create_s']:.0f} s)" if r["create_s"] is not None else "")
        console.print(f"{r['name']:<{width}}  {r['status']:<8} {envs.human_size(r['size_bytes']):>10}  "
                      f"{created}", highlight=False)
        console.print(f"  {r['packages']}", style="dim", highlight=False, markup=False)
    total = sum(r["size_bytes"] for r in rows)
    console.print(f"{len(rows)} env(s), {envs.human_size(total)} in {root}", highlight=False)


@envs_app.command("remove")
def envs_remove_cmd(
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends, NAME or NAME==VERSION: remove their current env."),
    all_envs: bool = typer.Option(False, "--all", help="Remove every env."),
    stale: bool = typer.Option(False, "--stale", help="Remove the envs no backend's requirement set uses any more (and incomplete ones)."),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=ENVS_DIR_HELP),
) -> None:
    """Remove envs (--backends, --stale or --all)."""
    if sum([backends is not None, all_envs, stale]) != 1:
        raise FwbenchError("say which envs to remove: --backends NAMES, --stale or --all")
    root = envs.envs_dir(envs_dir)
    known = discover_backends()
    if backends is not None:
        targets, seen = [], set()
        for n in backend_names(backends, known):
            rs = envs.for_label(n, known)
            if rs.name in seen:
                continue
            seen.add(rs.name)
            env = envs.open_env(root / rs.name)
            if envs.is_env_folder(env.path):
                targets.append(env)
            else:
                console.print(f"no env for {n} in {root}", highlight=False)
    else:
        targets = [e for e in envs.all_envs(root) if all_envs or _env_status(e, known) != "current"]
    for env in targets:
        size = envs.disk_usage(env.path)
        envs.remove(env)
        console.print(f"removed {env.name} ({envs.human_size(size)})", highlight=False)
    if not targets and backends is None:
        console.print(f"nothing to remove in {root}", highlight=False)
