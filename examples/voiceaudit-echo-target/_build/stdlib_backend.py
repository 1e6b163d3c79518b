"""A PEP 517 build backend in the standard library alone, for this example package.

It builds a wheel (and an sdist) of the packages under ``src/`` with the metadata and the
entry points that ``pyproject.toml``'s ``[project]`` table declares: name, version,
description, requires-python, dependencies and ``[project.entry-points]``. Nothing else
of PEP 621 is read. It exists so that the example installs with no network and no build
tools (``pip install --no-build-isolation``); a real plugin would use setuptools,
hatchling or flit-core.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TAG = "py3-none-any"


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _dist_name(project: dict[str, Any]) -> str:
    return str(project["name"]).replace("-", "_").replace(".", "_").lower()


def _metadata(project: dict[str, Any]) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
    ]
    if "description" in project:
        lines.append(f"Summary: {project['description']}")
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def _entry_points(project: dict[str, Any]) -> str:
    out = []
    for group, eps in project.get("entry-points", {}).items():
        out.append(f"[{group}]")
        out += [f"{name} = {value}" for name, value in eps.items()]
        out.append("")
    return "\n".join(out)


def _sources() -> list[tuple[str, bytes]]:
    """(path in the wheel, content) of every file of the packages under src/."""
    src = ROOT / "src"
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [(p.relative_to(src).as_posix(), p.read_bytes()) for p in files]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    """Nothing beyond the standard library."""
    return []


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    """Nothing beyond the standard library."""
    return []


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``wheel_directory``."""
    project = _project()
    name, version = _dist_name(project), project["version"]
    info = f"{name}-{version}.dist-info"
    files = _sources()
    files.append((f"{info}/METADATA", _metadata(project).encode()))
    files.append((f"{info}/entry_points.txt", _entry_points(project).encode()))
    wheel_meta = f"Wheel-Version: 1.0\nGenerator: stdlib_backend\nRoot-Is-Purelib: true\nTag: {TAG}\n"
    files.append((f"{info}/WHEEL", wheel_meta.encode()))
    record = [_record_line(p, d) for p, d in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    filename = f"{name}-{version}-{TAG}.whl"
    with zipfile.ZipFile(Path(wheel_directory) / filename, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files:
            zf.writestr(path, data)
    return filename


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    """Write ``<name>-<version>.tar.gz`` (pyproject.toml, _build/ and src/)."""
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    filename = f"{base}.tar.gz"
    members = ["pyproject.toml", "_build/stdlib_backend.py"]
    members += [f"src/{p}" for p, _ in _sources()]
    with tarfile.open(Path(sdist_directory) / filename, "w:gz") as tar:
        for rel in members:
            data = (ROOT / rel).read_bytes()
            ti = tarfile.TarInfo(f"{base}/{rel}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        pkg_info = _metadata(project).encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tar.addfile(ti, io.BytesIO(pkg_info))
    return filename
