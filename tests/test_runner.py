"""make_disk_image.runner: real qemu TCG boots of the host kernel against small disk images."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from make_disk_image import guestinit, runner
from make_disk_image.kernel import Kernel
from make_disk_image.process import StepError
from testsys.vmtools import guest_options, host_guest, host_path_root

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# A vendor GUID of our own: efivarfs refuses unknown names under the EFI global GUID.
TEST_VARIABLE = "MdiTest-3cd7a8a2-51f0-4b6e-9d61-7a0c9b7f1e25"
# The interpreter running the tests; the guest sees it through the read-only 9p root.
PYTHON = os.path.realpath(sys.executable)


def _stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return comm, int(stat[stat.rindex(")") + 2 :].split()[1])


def _ppid(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[1] if stat else None


def _all_qemu() -> list[int]:
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return [pid for pid in pids if (_stat(pid) or ("", 0))[0].startswith("qemu-system")]


def _qemu_children() -> list[int]:
    """qemu processes that are children of this test process."""
    return [pid for pid in _all_qemu() if _ppid(pid) == os.getpid()]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 32 MiB GPT image with a 4 MiB first partition and the rest as a second one."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "--quiet", str(image)],
        input=b"label: gpt\nstart=2048, size=8192, type=U\nstart=10240, type=L\n",
        check=True,
    )
    return image


def _guest_options() -> list[str]:
    return guest_options(host_guest())


def _run(argv: list[str], root: Path = Path("/"), **kwargs: object) -> tuple[int, str]:
    log = io.StringIO()
    status = runner.run_in_vm(argv, host_guest(root), log=log, **kwargs)  # type: ignore[arg-type]
    return status, log.getvalue()


# ---------------------------------------------------------------------------
# No VM


def test_firmware_options_select_the_bzimage() -> None:
    assert runner.uses_firmware(["-drive", "if=pflash,format=raw,unit=0,file=CODE.fd"])
    assert runner.uses_firmware(["-bios", "/usr/share/ovmf/OVMF.fd"])
    assert not runner.uses_firmware(["-smp", "2", "-machine", "q35"])


def test_guest_inputs_are_checked_before_any_work(tmp_path: Path) -> None:
    guest = host_guest()
    kernel = Kernel(guest.kernel.image, tmp_path)
    bad = runner.Guest(guest.platform, kernel, guest.busybox, tmp_path)
    with pytest.raises(StepError, match="modules.dep"):
        runner.run_in_vm(["true"], bad)
    with pytest.raises(StepError, match="no command"):
        runner.run_in_vm([], guest)
    with pytest.raises(StepError, match="not a directory"):
        runner.run_in_vm(["true"], guest, shares=[runner.Share(tmp_path / "none", "/mnt/x")])


# ---------------------------------------------------------------------------
# Real boots


@pytest.mark.vm
@pytest.mark.parametrize("code", [0, 7])
def test_exit_status_propagates(code: int) -> None:
    started = time.monotonic()
    status, log = _run(
        ["sh", "-c", f"echo uptime $(cat /proc/uptime); echo guest-output; exit {code}"], disk=None
    )
    elapsed = time.monotonic() - started
    assert status == code
    assert "guest-output\n" in log
    uptime = float(log.split("\nuptime ")[1].split()[0])
    print(f"boot to command: {uptime:.2f} s guest uptime, whole run {elapsed:.1f} s")


@pytest.mark.vm
def test_disk_is_vda_with_partitions(disk: Path) -> None:
    script = (
        "set -e; test -b /dev/vda1; test -b /dev/vda2; ! test -e /dev/vda3;"
        "blockdev --getsize64 /dev/vda2;"
        "printf partition-two > /dev/vda2; sync;"
        "mkfs.vfat /dev/vda1 >/dev/null; mkdir /mnt/esp; mount /dev/vda1 /mnt/esp;"
        "echo on-esp > /mnt/esp/file; umount /mnt/esp"
    )
    status, log = _run(["bash", "-c", script], disk=disk)
    assert status == 0, log
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout
    )
    assert f"\n{table['partitiontable']['partitions'][1]['size'] * 512}\n" in log
    with disk.open("rb") as f:
        f.seek(10240 * 512)
        assert f.read(13) == b"partition-two"
    mtype = subprocess.run(
        ["mtype", "-i", f"{disk}@@{2048 * 512}", "::file"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert mtype.stdout == "on-esp\n"


@pytest.mark.vm
def test_shares_env_cwd_and_read_only_root(tmp_path: Path) -> None:
    writable = tmp_path / "xchg"
    writable.mkdir()
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / "input").write_text("from-host\n")
    script = (
        "pwd; env | sort;"
        "cat /mnt/ro/input > from-guest;"  # relative: cwd is the writable share
        "if touch /etc/mdi-must-fail 2>/dev/null; then echo ROOT-WRITABLE; fi;"
        "if touch /mnt/ro/mdi-must-fail 2>/dev/null; then echo SHARE-WRITABLE; fi;"
        "touch /tmp/ok /run/ok /mnt/ok && echo tmpfs-ok;"
        f"{PYTHON} -c 'import sys; print(\"python\", sys.version_info[0])'"
    )
    status, log = _run(
        ["bash", "-c", script],
        disk=None,
        shares=[
            runner.Share(host=writable, guest="/tmp/xchg", writable=True),
            runner.Share(host=readonly, guest="/mnt/ro"),
        ],
        env={"FOO": "bar baz"},
        cwd="/tmp/xchg",
    )
    assert status == 0, log
    assert (writable / "from-guest").read_text() == "from-host\n"
    assert "/tmp/xchg\n" in log
    assert "FOO=bar baz\n" in log
    assert f"PATH={guestinit.DEFAULT_PATH}\n" in log
    assert "HOME=" not in log
    assert "ROOT-WRITABLE" not in log
    assert "SHARE-WRITABLE" not in log
    assert not Path("/etc/mdi-must-fail").exists()
    assert not (readonly / "mdi-must-fail").exists()
    assert "tmpfs-ok" in log
    assert "python 3" in log


@pytest.mark.vm
def test_shares_mount_anywhere_but_not_inside_a_read_only_directory(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("shared\n")
    status, log = _run(["cat", "/no-such-dir-mdi/marker"],
                       shares=[runner.Share(host=tmp_path, guest="/no-such-dir-mdi")])
    assert status == 0 and "shared\n" in log, log
    with pytest.raises(StepError, match="missing from a read-only directory"):
        _run(["true"], shares=[runner.Share(host=tmp_path, guest="/etc/no-such-dir-mdi")])


@pytest.mark.vm
def test_a_root_of_some_host_paths_holds_only_those(tmp_path: Path) -> None:
    """What the nixpkgs stand-in's runInLinuxVM gives: a root of the host's /usr (and the
    links into it), its loader cache, no /home, /work or /var."""
    root = tmp_path / "root"
    root.mkdir()
    paths = ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache", "/usr/share"]
    shares = host_path_root(paths, root)
    status, log = _run(["sh", "-c", "ls -A /; ls /usr/bin/env"], root=root, shares=shares)
    assert status == 0, log
    entries = set(log.split())
    assert {"usr", "bin", "etc", "tmp", "proc"} <= entries
    assert not entries & {"home", "work", "var", "srv"}, entries


# What the engine passes for touchEFIVars: plain OVMF on the default machine, OVMF on
# q35 with SMM, and the SMM-requiring secure-boot build (ovmfSystemManagementModeRequired).
UEFI_VARIANTS = {
    "pc": (OVMF_CODE, []),
    "q35-smm": (OVMF_CODE, ["-machine", "q35,smm=on"]),
    "secboot-smm": (
        OVMF_CODE.with_name("OVMF_CODE_4M.secboot.fd"),
        ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"],
    ),
}


@pytest.mark.vm
@pytest.mark.parametrize("variant", sorted(UEFI_VARIANTS))
def test_uefi_guest_keeps_variables_in_vars_file(tmp_path: Path, variant: str) -> None:
    code, machine = UEFI_VARIANTS[variant]
    vars_copy = tmp_path / "vars.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    before = vars_copy.read_bytes()
    write_variable = (
        "import os\n"
        f"path = '/sys/firmware/efi/efivars/{TEST_VARIABLE}'\n"
        "fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "os.write(fd, b'\\x07\\x00\\x00\\x00mdi-uefi-value')\n"
        "os.close(fd)\n"
        "print(open('/proc/mounts').read())\n"
    )
    status, log = _run(
        [PYTHON, "-c", write_variable],
        disk=None,
        qemu_opts=[
            *machine,
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ],
        timeout=300,
    )
    assert status == 0, log
    assert "efivarfs /sys/firmware/efi/efivars efivarfs" in log
    after = vars_copy.read_bytes()
    assert b"mdi-uefi-value" not in before
    assert b"mdi-uefi-value" in after
    assert "MdiTest".encode("utf-16-le") in after


@pytest.mark.vm
def test_bios_guest_has_no_efi_and_all_output_arrives() -> None:
    # The last of a burst of output must reach the host before the guest powers off.
    status, log = _run(
        ["sh", "-c", "test -d /sys/firmware/efi && echo HAS-EFI; seq 1 30000; exit 3"],
        disk=None,
    )
    assert status == 3
    assert "HAS-EFI" not in log
    assert "\n29999\n30000\n" in log


@pytest.mark.vm
def test_timeout_raises_and_leaves_no_qemu() -> None:
    started = time.monotonic()
    with pytest.raises(StepError, match="did not finish within 12 s") as error:
        _run(["sleep", "600"], disk=None, timeout=12)
    assert error.value.step == "vm"
    assert time.monotonic() - started < 30
    assert _qemu_children() == []


@pytest.mark.vm
def test_qemu_dies_with_a_killed_driver(tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-m", "testsys.vmtools", "--", "sleep", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        qemu: list[int] = []
        while not qemu and time.monotonic() < deadline:
            time.sleep(0.5)
            qemu = [pid for pid in _all_qemu() if _ppid(pid) == driver.pid]
        assert qemu, "qemu did not start"
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{qemu[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{qemu[0]}").exists()


@pytest.mark.vm
def test_guest_dying_without_status_raises() -> None:
    # A kernel panic (sysrq crash) ends the guest before the command can return.
    with pytest.raises(StepError, match="without reporting"):
        _run(
            ["sh", "-c", "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger"],
            disk=None,
            timeout=120,
        )
    assert _qemu_children() == []


@pytest.mark.vm
def test_cli_propagates_status_and_passes_options(tmp_path: Path, disk: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "make_disk_image.vm",
            *_guest_options(),
            "--disk",
            str(disk),
            "--share",
            f"{tmp_path}:/tmp/xchg:rw",
            "--mem",
            "512",
            "--env",
            "GREETING=hello=world",
            "--cwd",
            "/tmp/xchg",
            "--timeout",
            "300",
            "--qemu-opts",
            "-smp 2",
            "--",
            "sh",
            "-c",
            'echo "$GREETING" > out; nproc >> out; test -b /dev/vda2 && exit 42',
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 42, proc.stderr
    assert (tmp_path / "out").read_text() == "hello=world\n2\n"




@pytest.mark.vm
@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-arm")
def test_cli_boots_a_guest_of_another_system_from_paths(tmp_path: Path) -> None:
    """What default.nix's crossImage runs: the aarch64 kernel, modules, busybox and root
    as paths; a share at a path the root does not have."""
    from make_disk_image.hostkernel import installed_busybox, installed_kernel
    from testsys import guestroot

    try:
        guestroot.kernel_package("arm64")
    except Exception as exc:  # no arm64 lists: .ci/setup not run on this machine
        pytest.skip(f"no arm64 package lists: {exc}")
    root = guestroot.guest_root("arm64")
    kernel = installed_kernel(root)
    (tmp_path / "input").write_text("from the host\n")
    proc = subprocess.run(
        [sys.executable, "-m", "make_disk_image.vm", "--system", "aarch64-linux",
         "--kernel", str(kernel.image), "--modules", str(kernel.modules),
         "--busybox", str(installed_busybox(root)), "--root", str(root),
         "--share", f"{tmp_path}:/srv/mdi-share:rw", "--timeout", "300",
         "--", "sh", "-c", "uname -m > /srv/mdi-share/machine; cat /srv/mdi-share/input"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "machine").read_text() == "aarch64\n"
    assert "from the host" in proc.stderr
