"""finish: every format through qemu-img, hydra-build-products, nothing partial in $out."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, UNPRIVILEGED_USER, Closure, Engine, base_spec
from imagecheck import e2fsck_clean, qemu_img_info, run, sfdisk_json

FORMATS = {  # format -> (file name, qemu-img's format name, Hydra product type)
    "raw": ("nixos.img", "raw", "raw-image"),
    "qcow2": ("nixos.qcow2", "qcow2", "qcow2-image"),
    "qcow2-compressed": ("nixos.qcow2", "qcow2", "qcow2-image"),
    "vdi": ("nixos.vdi", "vdi", "vdi-image"),
    "vpc": ("nixos.vhd", "vpc", "vpc-image"),
    "vmdk": ("nixos.vmdk", "vmdk", "vmdk-image"),
    "vhdx": ("nixos.vhdx", "vhdx", "vhdx-image"),
    "qcow2-zstd": ("nixos.qcow2", "qcow2", "qcow2-image"),
    "raw-zstd": ("nixos.img.zst", None, "raw-zstd-image"),
}


def prepared(engine: Engine, closure: Closure, **kw: object) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    # No work for the guest: prepare, then finish, as Nix runs them then.
    spec = base_spec(closure, partitionTableType="efi", additionalSpace="8M",
                     installBootLoader=False, **kw)
    build_dir, out = engine.new_build(str(kw.get("format", "raw")))
    result = engine.run("prepare", spec, build_dir=build_dir, out=out)
    assert result.returncode == 0, result.stderr
    return build_dir, out, spec


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format(closure: Closure, engine: Engine, fmt: str, tmp_path: Path) -> None:
    build_dir, out, spec = prepared(engine, closure, format=fmt)
    raw_size = (build_dir / "nixos.raw").stat().st_size
    result = engine.run("finish", spec, build_dir=build_dir, out=out)
    assert result.returncode == 0, result.stderr
    filename, qemu_name, product = FORMATS[fmt]
    image = out / filename
    assert result.stdout.strip() == str(image)
    products = (out / "nix-support/hydra-build-products").read_text()
    assert products == f"file {product} {image}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([filename, "nix-support"])
    assert not (build_dir / "image.raw").exists()  # the converted one's raw is removed
    # The converted image holds the same disk: table and clean root filesystem.
    back = tmp_path / "back.raw"
    if qemu_name is None:
        run("zstd", "-t", "-q", str(image))
        run("zstd", "-d", "-q", str(image), "-o", str(back))
    else:
        info = qemu_img_info(image, qemu_name)
        assert info["format"] == qemu_name
        assert info["virtual-size"] == raw_size
        run("qemu-img", "convert", "-f", qemu_name, "-O", "raw", str(image), str(back))
    assert back.stat().st_size == raw_size
    table = sfdisk_json(back)
    assert table["id"] == "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
    root = table["partitions"][1]
    assert e2fsck_clean(back, root["start"] * 512).returncode == 0


def test_compressed_qcow2_is_smaller(closure: Closure, engine: Engine) -> None:
    sizes = {}
    for fmt in ("qcow2", "qcow2-compressed"):
        build_dir, out, spec = prepared(engine, closure, format=fmt)
        assert engine.run("finish", spec, build_dir=build_dir, out=out).returncode == 0
        sizes[fmt] = (out / "nixos.qcow2").stat().st_size
    assert sizes["qcow2-compressed"] < sizes["qcow2"]


def test_deterministic_reaches_the_format(closure: Closure, engine: Engine) -> None:
    """finish passes `deterministic` on: VDI's random UUIDs are fixed only when asked."""
    images = {}
    for deterministic in (True, True, False):
        build_dir, out, spec = prepared(engine, closure, format="vdi", deterministic=deterministic)
        assert engine.run("finish", spec, build_dir=build_dir, out=out).returncode == 0
        images.setdefault(deterministic, []).append((out / "nixos.vdi").read_bytes())
    assert images[True][0] == images[True][1]
    assert images[False][0] != images[True][0]


def test_finish_without_prepare_fails_and_leaves_out_empty(closure: Closure,
                                                           engine: Engine) -> None:
    result = engine.run("finish", base_spec(closure))
    assert result.returncode == 1
    assert "run `make-disk-image prepare` first" in result.stderr
    assert not result.out.exists() or list(result.out.iterdir()) == []


def test_failed_conversion_leaves_no_partial(closure: Closure, engine: Engine) -> None:
    build_dir, out, spec = prepared(engine, closure, format="qcow2")
    out.mkdir(exist_ok=True)
    out.chmod(0o555)  # qemu-img cannot create its output
    try:
        result = engine.run("finish", spec, build_dir=build_dir, out=out)
    finally:
        out.chmod(0o755)
    assert result.returncode == 1
    assert "qemu-img convert" in result.stderr
    assert [p.name for p in out.iterdir()] == []
    assert not (build_dir / "image.raw").exists()


def test_products_file_unwritable_leaves_no_image(closure: Closure, engine: Engine) -> None:
    """hydra-build-products cannot be written (its directory is root's): finish fails
    naming it, and the image, already made, is not left in $out without its line."""
    build_dir, out, spec = prepared(engine, closure, format="raw")
    out.mkdir(exist_ok=True)  # prepare may have made it
    shutil.chown(out, UNPRIVILEGED_USER, UNPRIVILEGED_USER)
    (out / "nix-support").mkdir(mode=0o755)  # root's: the build user cannot write there
    result = engine.run("finish", spec, build_dir=build_dir, out=out)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[-1].startswith("error: finish: writing the image and "), errors
    assert "hydra-build-products" in errors[-1] and "Permission denied" in errors[-1]
    assert result.stdout == ""
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["nix-support"]


def test_a_truncated_vm_disk_fails_instead_of_losing_the_boot_code(
    closure: Closure, engine: Engine
) -> None:
    """The VM's disk cut short (here, before its backup GPT): SEEK_DATA past its end
    says ENXIO, which must not read as "a hole to the end"."""
    build_dir, out, spec = prepared(engine, closure, format="raw")
    vm_disk = build_dir / "nixos.raw"
    size = vm_disk.stat().st_size
    os.truncate(vm_disk, size - 1024 * 1024)
    result = engine.run("finish", spec, build_dir=build_dir, out=out)
    assert result.returncode == 1, result.stderr
    assert "error: finish: keep partition tables and boot code: " in result.stderr
    assert "shorter than" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


PACKAGE = "make_disk_image"
PHASES = {"prepare", "guest", "finish"}


def engine_modules_imported(source: str) -> set[str]:
    """The make_disk_image modules a module of that package imports, in every form:
    `import make_disk_image.X`, `from make_disk_image(.X) import ...` and the relative
    `from . import X`, `from .X import ...`."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # A relative import (level 1) is relative to the package itself.
            base = PACKAGE if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            # `from PACKAGE import X`: each X may be a module.
            dotted = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in dotted:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                imported.add(parts[1])
    return imported


@pytest.mark.parametrize(
    "source",
    [
        "from . import prepare",
        "from . import handoff, prepare as p",
        "from .prepare import compute_plan",
        "from make_disk_image import prepare",
        "from make_disk_image.prepare import compute_plan",
        "import make_disk_image.prepare",
        "import make_disk_image.prepare as p",
        "def f():\n    from . import prepare",
    ],
)
def test_every_import_form_is_seen(source: str) -> None:
    assert "prepare" in engine_modules_imported(source)


def test_other_packages_and_the_contract_are_not_phases() -> None:
    seen = engine_modules_imported(
        "import prepare\nfrom os import path\nfrom .handoff import Handoff\n"
        "from make_disk_image import handoff"
    )
    assert seen == {"handoff"}


def test_finish_takes_nothing_from_prepare() -> None:
    """The phases share only the contract module (handoff): finish imports no other
    phase, and neither does the guest."""
    for phase in PHASES:
        imported = engine_modules_imported((REPO / PACKAGE / f"{phase}.py").read_text())
        assert not (imported & (PHASES - {phase})), (phase, imported & PHASES)


def test_finish_takes_prepares_tree_and_refuses_another_spec(closure: Closure,
                                                               engine: Engine) -> None:
    from conftest import world_readable_dir
    from imagecheck import ls

    src = world_readable_dir("mdi-handed-")
    (src / "first").write_text("1\n")
    (src / "first").chmod(0o644)
    contents = [{"source": str(src), "target": "/srv/app"}]
    build_dir, out, spec = prepared(engine, closure, contents=contents)
    # Written after prepare: finish does not describe the tree again, so it is not in
    # the image (a store path cannot change; this is the only way to see it).
    (src / "later").write_text("2\n")
    (src / "later").chmod(0o644)
    other = dict(spec, contents=[*contents, {"source": str(src / "later"), "target": "/x"}])
    refused = engine.run("finish", other, build_dir=build_dir, out=out)
    assert refused.returncode == 1
    assert "staged from another spec" in refused.stderr, refused.stderr
    assert not (out / "nixos.img").exists()
    result = engine.run("finish", spec, build_dir=build_dir, out=out)
    assert result.returncode == 0, result.stderr
    image = out / "nixos.img"
    root = sfdisk_json(image)["partitions"][1]
    assert ls(image, root["start"] * 512, "/srv/app") == ["first"]
