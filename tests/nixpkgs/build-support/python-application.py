"""The stand-in's buildPythonApplication install step.

Installs a setuptools project described by setup.cfg the way a wheel install would:
the packages found by [options.packages.find] into $out/lib/python3.11/site-packages,
with their [options.package_data] files,
and one wrapper per console_scripts entry point into $out/bin. The wrappers put the
package and its dependencies (the `dependencies` store paths) on sys.path, as nixpkgs'
wrapPythonPrograms does with NIX_PYTHONPATH.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import shutil
import sys
from pathlib import Path

SITE = "lib/python3.11/site-packages"


def install_packages(setup: configparser.ConfigParser, site: Path) -> None:
    include = setup.get("options.packages.find", "include", fallback="*").split()
    packages = sorted(
        str(init.parent).replace("/", ".")
        for init in Path(".").rglob("__init__.py")
        if any(fnmatch.fnmatch(str(init.parent).replace("/", "."), pat) for pat in include)
    )
    if not packages:
        sys.exit("error: setup.cfg [options.packages.find] matched no package")
    for package in packages:
        source = Path(package.replace(".", "/"))
        dest = site / source
        dest.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, dest / module.name)
        for data in package_data(setup, package, source):
            shutil.copy2(data, dest / data.name)


def package_data(setup: configparser.ConfigParser, package: str, source: Path) -> list[Path]:
    """The files [options.package_data] names for `package` (globs in its directory;
    "*" applies to every package), as setuptools installs them."""
    patterns: list[str] = []
    for key in (package, "*"):
        patterns += setup.get("options.package_data", key, fallback="").replace(",", " ").split()
    return sorted({path for pattern in patterns for path in source.glob(pattern) if path.is_file()})


def install_scripts(
    setup: configparser.ConfigParser, bin_dir: Path, interpreter: str, search_path: list[str]
) -> None:
    entry_points = setup.get("options.entry_points", "console_scripts", fallback="")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for line in entry_points.strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, function = target.partition(":")
        wrapper = bin_dir / name
        wrapper.write_text(
            f"#!{interpreter}\n"
            "import sys\n"
            f"sys.path[0:0] = {search_path!r}\n"
            f"from {module} import {function}\n"
            f"sys.exit({function}())\n"
        )
        wrapper.chmod(0o755)
        print(f"installed {wrapper} -> {target}")


def main() -> None:
    out = Path(os.environ["out"])  # noqa: SIM112 - Nix names it so
    dependencies = os.environ.get("dependencies", "")  # noqa: SIM112 - the attribute's name
    interpreter = sys.argv[1]
    setup = configparser.ConfigParser()
    setup.read("setup.cfg")
    site = out / SITE
    install_packages(setup, site)
    search_path = [str(site)] + [f"{dep}/{SITE}" for dep in dependencies.split()]
    install_scripts(setup, out / "bin", interpreter, search_path)


if __name__ == "__main__":
    main()
