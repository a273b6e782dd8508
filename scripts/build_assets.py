"""Copy the dashboard's front-end libraries from node_modules into the package's static files.

Run after ``npm ci`` (which installs exactly what package-lock.json pins, from the npm
registry): ``npm ci --no-audit --no-fund && python scripts/build_assets.py``. The copies go to
``src/tradeloom/web/static/vendor/`` (git-ignored: libraries come from npm, never committed),
each with its licence. Nothing is fetched at run time: the dashboard loads these files from the
app itself, and without them it still works and says the chart is missing.

Exits 1 with one line when a library is not installed, or is not the version package-lock.json
pins (a stale node_modules).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "src" / "tradeloom" / "web" / "static" / "vendor"

# package -> (file in the package, name in vendor/)
FILES: dict[str, list[tuple[str, str]]] = {
    "lightweight-charts": [
        (
            "dist/lightweight-charts.standalone.production.js",
            "lightweight-charts.standalone.production.js",
        ),
        ("LICENSE", "lightweight-charts.LICENSE.txt"),
    ],
}


class AssetError(Exception):
    """A library is not installed as package-lock.json pins it."""


def locked_version(package: str) -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    version: str = lock["packages"][f"node_modules/{package}"]["version"]
    return version


def installed_version(package: str) -> str | None:
    manifest = NODE_MODULES / package / "package.json"
    if not manifest.is_file():
        return None
    version: str = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    return version


def build() -> list[Path]:
    """Copy every file of :data:`FILES`; returns the files written. Raises
    :class:`AssetError` when a package is missing or not the locked version."""
    written = []
    VENDOR.mkdir(parents=True, exist_ok=True)
    for package, files in FILES.items():
        wanted, found = locked_version(package), installed_version(package)
        if found is None:
            raise AssetError(f"{package} is not installed: run `npm ci` first")
        if found != wanted:
            raise AssetError(
                f"node_modules has {package} {found}, package-lock.json pins {wanted}: run `npm ci`"
            )
        for source, name in files:
            target = VENDOR / name
            shutil.copyfile(NODE_MODULES / package / source, target)
            written.append(target)
    return written


def main() -> int:
    try:
        written = build()
    except AssetError as exc:
        print(f"build_assets: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"build_assets: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
