"""Shared fixtures: a real Nix closure, spec files, and running the engine unprivileged.

The closure is made by Debian's Nix 2.8 (`nix-build` of a tiny expression whose
builder is /bin/sh): real store paths with real references, registered in the host's
Nix database, and a closureInfo directory shaped like nixpkgs' (`store-paths`,
`registration` in `nix-store --dump-db` format).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testsys.system import write_closure_info

REPO = Path(__file__).resolve().parent.parent
UNPRIVILEGED_USER = "mdi-builder"
# Debian's interpreter: the unprivileged user cannot read a pyenv under /root.
SYSTEM_PYTHON = "/usr/bin/python3"


CLOSURE_NIX = r"""
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  lib = mk "mdi-test-lib" ''
    mkdir -p $out/lib
    printf 'library v1\n' > $out/lib/libtest.txt
    head -c 70000 /dev/zero | tr '\0' 'x' > $out/lib/big.dat
  '';
  app = mk "mdi-test-app" ''
    mkdir -p $out/bin $out/share/doc
    printf '#!/bin/sh\necho uses ${lib}/lib/libtest.txt\n' > $out/bin/hello
    chmod 555 $out/bin/hello
    ln -s ${lib}/lib/libtest.txt $out/share/doc/lib-link
  '';
  extra = mk "mdi-test-extra" ''
    mkdir -p $out
    printf 'extra path\n' > $out/EXTRA
  '';
  toplevel = mk "nixos-system-test" ''
    mkdir -p $out/bin $out/etc
    printf '#!/bin/sh\nexec ${app}/bin/hello\n' > $out/init
    chmod 555 $out/init
    printf 'test 26.05\n' > $out/nixos-version
    printf 'console=ttyS0\n' > $out/kernel-params
    ln -s ${app} $out/sw
    printf '#!/bin/sh\necho switch "$@" > /etc/switched\n' > $out/bin/switch-to-configuration
    chmod 555 $out/bin/switch-to-configuration
  '';
  channel = mk "nixos-channel-test" ''
    mkdir -p $out/nixos
    printf '{ }: { }\n' > $out/nixos/default.nix
    printf 'pre-test' > $out/nixos/.version-suffix
  '';
in { inherit lib app extra toplevel channel; }
"""


# MDI_NIXPKGS_LIB=DIR: the Nix tests run against the nixpkgs lib at DIR instead of the
# stand-in's own (tests/nixpkgs/selected-lib.nix reads it; docs/nix.md).
NIXPKGS_LIB_VARIABLE = "MDI_NIXPKGS_LIB"
# Files every nixpkgs lib has and the stand-in's needs from it.
NIXPKGS_LIB_FILES = ("default.nix", "modules.nix", "options.nix", "types.nix")
# Where flake tests put DIR in their checkout: pure evaluation reads no environment.
EXTERNAL_LIB = Path("tests/nixpkgs/external-lib")


def selected_nixpkgs_lib() -> Path | None:
    """DIR of MDI_NIXPKGS_LIB, or None for the stand-in's own lib."""
    value = os.environ.get(NIXPKGS_LIB_VARIABLE, "")
    return Path(value).resolve() if value else None


def pytest_configure(config: pytest.Config) -> None:
    lib = selected_nixpkgs_lib()
    if lib is None:
        return
    missing = [name for name in NIXPKGS_LIB_FILES if not (lib / name).is_file()]
    if missing:
        raise pytest.UsageError(
            f"{NIXPKGS_LIB_VARIABLE}={lib} is not a nixpkgs lib directory (no "
            f"{', '.join(missing)}): point it at the `lib` directory of a nixpkgs checkout, "
            f"e.g. {NIXPKGS_LIB_VARIABLE}=$HOME/nixpkgs/lib"
        )
    # Nix reads it too (tests/nixpkgs/selected-lib.nix), from other working directories.
    os.environ[NIXPKGS_LIB_VARIABLE] = str(lib)


def pytest_report_header(config: pytest.Config) -> str:
    lib = selected_nixpkgs_lib()
    return f"nixpkgs lib: {lib if lib else 'the stand-in (tests/nixpkgs/lib)'}"


def add_selected_lib(checkout: Path) -> None:
    """Copy MDI_NIXPKGS_LIB's directory into a checkout that flakes evaluate."""
    lib = selected_nixpkgs_lib()
    if lib is not None:
        shutil.copytree(lib, checkout / EXTERNAL_LIB, symlinks=True)


@dataclass(frozen=True)
class Closure:
    toplevel: str
    channel: str
    extra: str
    lib: str
    app: str
    root: Path  # where closureInfo dirs are made

    def closure_info(self, *roots: str) -> Path:
        """A nixpkgs-shaped closureInfo over `roots` (a store path, as Nix makes it)."""
        key = "-".join(sorted(os.path.basename(r)[:8] for r in roots))
        return write_closure_info([Path(r) for r in roots], self.root / f"closure-info-{key}")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as a fresh git repository, for the Nix tests: flakes only see `git
    add`ed files, and this is what a CI clone looks like (without caches and build
    results)."""
    dest = tmp_path_factory.mktemp("checkout") / "make-disk-image"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if not src.exists():  # deleted in the working tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    add_selected_lib(dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A", "--force"], cwd=dest, check=True)
    return dest


# Nix-evaluating tests need nix-instantiate (nix-bin; .ci/setup installs it).
NEEDS_NIX = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate (nix-bin) not installed"
)


def boot_work_dir(prefix: str) -> Iterator[Path]:
    """A boot test module's directory. Not under /tmp: the engine's build VM mounts a
    fresh tmpfs there, so a spec or build directory in the host's /tmp would not exist
    for its guest phase. MDI_BOOT_TEST_DIR moves it; MDI_BOOT_TEST_KEEP=1 keeps specs,
    build logs, images and serial console logs."""
    base = Path(os.environ.get("MDI_BOOT_TEST_DIR", "/var/tmp"))
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    yield directory
    if not os.environ.get("MDI_BOOT_TEST_KEEP"):
        shutil.rmtree(directory, ignore_errors=True)


def world_readable_dir(prefix: str) -> Path:
    """pytest's tmp dirs live under a 0700 directory the build user cannot enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _nix_build(expr_file: Path, attr: str) -> str:
    out = subprocess.run(
        ["nix-build", "--no-out-link", str(expr_file), "-A", attr],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out


@pytest.fixture(scope="session")
def closure(tmp_path_factory: pytest.TempPathFactory) -> Closure:
    if shutil.which("nix-build") is None:
        pytest.fail("nix-build is missing: run .ci/setup (installs Debian's nix-bin)")
    root = world_readable_dir("mdi-closure-")
    expr = root / "closure.nix"
    expr.write_text(CLOSURE_NIX)
    built = {a: _nix_build(expr, a) for a in ("lib", "app", "extra", "toplevel", "channel")}
    return Closure(
        toplevel=built["toplevel"],
        channel=built["channel"],
        extra=built["extra"],
        lib=built["lib"],
        app=built["app"],
        root=root,
    )


def base_spec(closure: Closure, **overrides: Any) -> dict[str, Any]:
    """A spec for the test closure; channel and additionalPaths follow the overrides."""
    spec: dict[str, Any] = {"toplevel": closure.toplevel, "channelSources": closure.channel}
    spec.update(overrides)
    roots = [closure.toplevel]
    if spec.get("copyChannel", True):
        roots.append(closure.channel)
    roots += spec.get("additionalPaths", [])
    spec.setdefault("closureInfo", str(closure.closure_info(*roots)))
    return spec


@dataclass(frozen=True)
class EngineRun:
    returncode: int
    stdout: str
    stderr: str
    build_dir: Path
    out: Path


@pytest.fixture(scope="session")
def unprivileged_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world-readable copy of the package for the build user's interpreter."""
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pytest.fail(f"user {UNPRIVILEGED_USER} is missing: run .ci/setup")
    dest = world_readable_dir("mdi-pkg-")
    shutil.copytree(
        REPO / "make_disk_image",
        dest / "make_disk_image",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


class Engine:
    """Runs `make-disk-image` phases as the sandbox would: unprivileged, in a build dir."""

    def __init__(self, pkg: Path, workdir: Path) -> None:
        self.pkg = pkg
        self.workdir = workdir

    def new_build(self, name: str) -> tuple[Path, Path]:
        base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        build_dir, out = base / "build", base / "out"
        build_dir.mkdir()
        for path in (base, build_dir):
            shutil.chown(path, UNPRIVILEGED_USER, UNPRIVILEGED_USER)
        base.chmod(0o755)
        return build_dir, out

    def write_spec(self, build_dir: Path, spec: dict[str, Any]) -> Path:
        path = build_dir.parent / "spec.json"
        path.write_text(json.dumps(spec))
        path.chmod(0o644)
        return path

    def run(
        self,
        phase: str,
        spec: dict[str, Any],
        *,
        build_dir: Path | None = None,
        out: Path | None = None,
        name: str = "build",
        path_first: Path | None = None,
    ) -> EngineRun:
        """The engine's `phase` as the build user; `path_first`: a directory whose
        commands stand before the system's on PATH."""
        if build_dir is None or out is None:
            build_dir, out = self.new_build(name)
        spec_path = self.write_spec(build_dir, spec)
        system_path = "/usr/sbin:/usr/bin:/sbin:/bin"
        env = {
            "PATH": f"{path_first}:{system_path}" if path_first else system_path,
            "HOME": str(build_dir),
            "TMPDIR": str(build_dir),
            "PYTHONPATH": str(self.pkg),
            "out": str(out),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc = subprocess.run(
            [
                "runuser",
                "-u",
                UNPRIVILEGED_USER,
                "--",
                "env",
                "-i",
                *[f"{k}={v}" for k, v in env.items()],
                SYSTEM_PYTHON,
                "-m",
                "make_disk_image",
                phase,
                str(spec_path),
            ],
            cwd=build_dir,
            capture_output=True,
            text=True,
            timeout=900,
        )
        return EngineRun(proc.returncode, proc.stdout, proc.stderr, build_dir, out)


    def build_without_vm(self, spec: dict[str, Any], *, name: str = "build",
                         path_first: Path | None = None) -> EngineRun:
        """prepare, then finish, as Nix runs them when the guest has nothing to do
        (onlyNixStore, or no bootloader and no owners by name)."""
        build_dir, out = self.new_build(name)
        prepared = self.run("prepare", spec, build_dir=build_dir, out=out,
                            path_first=path_first)
        if prepared.returncode != 0:
            return prepared
        finished = self.run("finish", spec, build_dir=build_dir, out=out,
                            path_first=path_first)
        return EngineRun(finished.returncode, finished.stdout,
                         prepared.stderr + finished.stderr, build_dir, out)


@pytest.fixture
def engine(unprivileged_pkg: Path) -> Iterator[Engine]:
    workdir = world_readable_dir("mdi-test-")
    yield Engine(unprivileged_pkg, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
