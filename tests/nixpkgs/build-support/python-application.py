"""The stand-in's buildPythonApplication install step.

Installs a setuptools project described by setup.cfg the way a wheel install would:
the packages found by [options.packages.find] into $out/lib/python3.11/site-packages,
and one wrapper per console_scripts entry point into $out/bin. The wrappers put the
package and its dependencies (the `dependencies` store paths) on sys.path, as nixpkgs'
wrapPythonPrograms does with NIX_PYTHONPATH.
"""

import configparser
import fnmatch
import os
import shutil
import sys
from pathlib import Path

SITE = "lib/python3.11/site-packages"

out = Path(os.environ["out"])
interpreter = sys.argv[1]
setup = configparser.ConfigParser()
setup.read("setup.cfg")

include = setup.get("options.packages.find", "include", fallback="*").split()
packages = sorted(
    str(init.parent).replace("/", ".")
    for init in Path(".").rglob("__init__.py")
    if any(fnmatch.fnmatch(str(init.parent).replace("/", "."), pat) for pat in include)
)
if not packages:
    sys.exit("error: setup.cfg [options.packages.find] matched no package")
site = out / SITE
for package in packages:
    src = Path(package.replace(".", "/"))
    dst = site / src
    dst.mkdir(parents=True, exist_ok=True)
    for module in src.glob("*.py"):
        shutil.copy2(module, dst / module.name)

search_path = [str(site)] + [
    f"{dep}/{SITE}" for dep in os.environ.get("dependencies", "").split() if dep
]
scripts = setup.get("options.entry_points", "console_scripts", fallback="").strip().splitlines()
(out / "bin").mkdir(parents=True, exist_ok=True)
for line in scripts:
    name, _, target = (part.strip() for part in line.partition("="))
    module, _, function = target.partition(":")
    wrapper = out / "bin" / name
    wrapper.write_text(
        f"#!{interpreter}\n"
        "import sys\n"
        f"sys.path[0:0] = {search_path!r}\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())\n"
    )
    wrapper.chmod(0o755)
    print(f"installed {wrapper} -> {target}")
