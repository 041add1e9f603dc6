"""The bad-input corpus (tests/test_bad_input.py runs it): each case one thing wrong in
a valid spec, with the exit status and what the one `error:` line must name. `Inputs`
are the files the cases point at: good ones, and every kind of broken one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Closure

GONE = "/nix/store/00000000000000000000000000000000-gone"
SHORT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7"  # one digit short


@dataclass(frozen=True)
class Inputs:
    """Files the cases point at: good ones, and every kind of broken one."""

    closure: Closure
    root: Path

    def path(self, name: str) -> str:
        return str(self.root / name)

    def closure_info(self, name: str) -> str:
        return str(self.root / "ci" / name)


def contents(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"contents": list(entries)}


def entry(source: str, target: str = "/etc/x", **kw: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **kw}


Overrides = Callable[[Inputs], dict[str, Any]]


def fixed(**kw: Any) -> Overrides:
    return lambda _inputs: kw


# (id, overrides, exit status, what the error line must contain: the argument, the fix)
CASES: list[tuple[str, Overrides, int, tuple[str, ...]]] = [
    # Every key with a wrong type
    ("type-diskSize", fixed(diskSize=[1]), 2,
     ("`diskSize`", 'one of "auto", "minimal", but is: a list')),
    ("type-diskSize-float", fixed(diskSize=1.5), 2,
     ("`diskSize`", "a number of MiB", "but is: a float")),
    ("type-additionalSpace", fixed(additionalSpace=True), 2, ("`additionalSpace`", '"512M"')),
    ("type-bootSize", fixed(bootSize=None), 2, ("`bootSize`", '"512M"', "but is: null")),
    ("type-contents", fixed(contents="/etc/x"), 2, ("`contents`", "a list of")),
    ("type-partitionTableType", fixed(partitionTableType=1), 2,
     ("`partitionTableType`", "a string")),
    ("type-installBootLoader", fixed(installBootLoader="yes"), 2,
     ("`installBootLoader`", "true or false")),
    ("type-touchEFIVars", fixed(touchEFIVars=1), 2, ("`touchEFIVars`", "true or false")),
    ("type-efiFirmware", fixed(efiFirmware=5), 2, ("`efiFirmware`", "a path or a derivation")),
    ("type-efiVariables", fixed(efiVariables=[]), 2, ("`efiVariables`", "a path or a derivation")),
    ("type-ovmfSMM", fixed(ovmfSystemManagementModeRequired="no"), 2,
     ("`ovmfSystemManagementModeRequired`", "true or false")),
    ("type-fsType", fixed(fsType=None), 2, ("`fsType`", "a string")),
    ("type-label", fixed(label=3), 2, ("`label`", "a string, but is: 3")),
    ("type-configFile", fixed(configFile=True), 2, ("`configFile`", "null, a path")),
    ("type-postVM", fixed(postVM=None), 2, ("`postVM`", "a string")),
    ("type-memSize", fixed(memSize="1024"), 2, ("`memSize`", "a positive integer")),
    ("type-onlyNixStore", fixed(onlyNixStore=0), 2, ("`onlyNixStore`", "true or false")),
    ("type-name", fixed(name=1), 2, ("`name`", "a string")),
    ("type-format", fixed(format=None), 2, ("`format`", "a string")),
    ("type-baseName", fixed(baseName=["nixos"]), 2, ("`baseName`", "a string")),
    ("type-deterministic", fixed(deterministic="true"), 2, ("`deterministic`", "true or false")),
    ("type-rootGPUID", fixed(rootGPUID=123), 2, ("`rootGPUID`", "a GUID")),
    ("type-rootFSUID", fixed(rootFSUID=1), 2, ("`rootFSUID`", "a UUID")),
    ("type-copyChannel", fixed(copyChannel="false"), 2, ("`copyChannel`", "true or false")),
    ("type-additionalPaths", fixed(additionalPaths="/nix/store/a"), 2,
     ("`additionalPaths`", "a list")),
    ("type-toplevel", fixed(toplevel=None), 2, ("`toplevel`", "is required")),
    ("type-closureInfo", fixed(closureInfo=7), 2, ("`closureInfo`", "closureInfo")),
    ("type-channelSources", fixed(channelSources=False), 2, ("`channelSources`", "null, a path")),
    ("type-grubDevices", fixed(grubDevices="/dev/sda"), 2, ("`grubDevices`", "a list")),
    ("type-limineBiosDevice", fixed(limineBiosDevice=0), 2,
     ("`limineBiosDevice`", "null or a non-empty string")),
    ("unknown-key", fixed(diskSizes=100), 2, ("`diskSizes`", "unknown argument")),
    # Empty values
    ("empty-diskSize", fixed(diskSize=""), 2, ("`diskSize`", '"auto"')),
    ("empty-additionalSpace", fixed(additionalSpace=""), 2, ("`additionalSpace`", "numfmt")),
    ("empty-bootSize", fixed(bootSize=""), 2, ("`bootSize`", "numfmt")),
    ("empty-partitionTableType", fixed(partitionTableType=""), 2,
     ("`partitionTableType`", '"efi"')),
    ("empty-fsType", fixed(fsType="", partitionTableType="none"), 2, ("`fsType`", "ext4")),
    ("empty-format", fixed(format=""), 2, ("`format`", '"qcow2"')),
    ("empty-baseName", fixed(baseName=""), 2, ("`baseName`", "not empty")),
    ("empty-name", fixed(name=""), 2, ("`name`", "derivation name")),
    ("empty-rootGPUID", fixed(rootGPUID=""), 2, ("`rootGPUID`", "8-4-4-4-12")),
    ("empty-rootFSUID", fixed(rootFSUID=""), 2, ("`rootFSUID`", "null or a UUID")),
    ("empty-toplevel", fixed(toplevel=""), 2, ("`toplevel`", "a path", 'but is: ""')),
    ("empty-closureInfo", fixed(closureInfo=""), 2, ("`closureInfo`", "a path", 'but is: ""')),
    ("empty-configFile", fixed(configFile=""), 2, ("`configFile`", "null, a path", 'but is: ""')),
    ("empty-channelSources", fixed(channelSources=""), 2,
     ("`channelSources`", "null, a path", 'but is: ""')),
    ("empty-grubDevice", fixed(grubDevices=[""]), 2, ("`grubDevices[0]`", "a non-empty string")),
    ("empty-additionalPath", fixed(additionalPaths=[""]), 2,
     ("`additionalPaths[0]`", "not empty")),
    ("empty-limineBiosDevice", fixed(limineBiosDevice=""), 2,
     ("`limineBiosDevice`", "null or a non-empty string")),
    ("empty-contents-entry", fixed(contents=[{}]), 2,
     ("`contents[0]`", "source and target not empty")),
    ("nul-in-source", lambda i: contents(entry(i.path("file") + "\0x")), 2,
     ("`contents[0].source`", "NUL")),
    # Negative and huge numbers
    ("negative-diskSize", fixed(diskSize=-1), 2, ("`diskSize`", "positive")),
    ("zero-diskSize", fixed(diskSize=0), 2, ("`diskSize`", "positive")),
    ("huge-diskSize", fixed(diskSize=10**13), 2, ("`diskSize`", "smaller number")),
    # Within the 1E limit but beyond what the build directory's ext4 holds (16 TiB)
    ("diskSize-too-large-for-the-build-dir", fixed(diskSize=10**9), 1,
     ("`diskSize`", "File too large")),
    ("negative-memSize", fixed(memSize=-5), 2, ("`memSize`", "a positive integer", "but is: -5")),
    ("small-memSize", fixed(memSize=100), 2, ("`memSize`", "at least 256")),
    ("huge-memSize", fixed(memSize=10**20), 2, ("`memSize`", "the default 1024")),
    ("negative-additionalSpace", fixed(additionalSpace=-1), 2,
     ("`additionalSpace`", "or a number of bytes", "but is: -1")),
    ("negative-bootSize-string", fixed(bootSize="-5M"), 2, ("`bootSize`", '"512M"')),
    ("huge-additionalSpace", fixed(additionalSpace="99999999P"), 2,
     ("`additionalSpace`", "smaller size")),
    ("huge-bootSize", fixed(bootSize="2E", partitionTableType="efi"), 2,
     ("`bootSize`", "smaller size")),
    ("small-bootSize-efi", fixed(bootSize="7M", partitionTableType="efi"), 2,
     ("`bootSize`", "at least 8M")),
    ("small-diskSize", fixed(diskSize=200, partitionTableType="efi"), 1,
     ("diskSize 200 MiB is too small", 'use "auto"')),
    # Sizes with bad units
    ("unit-Ki", fixed(additionalSpace="512Mi"), 2, ("`additionalSpace`", "no 'i'")),
    ("unit-lowercase", fixed(additionalSpace="512m"), 2, ("`additionalSpace`", "no lower case")),
    ("unit-MB", fixed(bootSize="256MB"), 2, ("`bootSize`", "numfmt")),
    ("unit-two-dots", fixed(additionalSpace="1.5.5M"), 2, ("`additionalSpace`", "numfmt")),
    ("unit-only", fixed(additionalSpace="M"), 2, ("`additionalSpace`", "numfmt")),
    ("unit-exponent", fixed(additionalSpace="1e3"), 2, ("`additionalSpace`", "numfmt")),
    # GUIDs one digit short
    ("short-rootGPUID", fixed(rootGPUID=SHORT_GUID), 2, ("`rootGPUID`", "8-4-4-4-12")),
    ("short-rootFSUID", fixed(rootFSUID=SHORT_GUID), 2,
     ("`rootFSUID`", "a UUID string (8-4-4-4-12")),
    ("nonhex-rootGPUID", fixed(rootGPUID=SHORT_GUID + "G"), 2, ("`rootGPUID`", "hexadecimal")),
    # Enumerations and reference asserts
    ("partitionTableType-gpt", fixed(partitionTableType="gpt"), 2,
     ("`partitionTableType`", '"legacy"')),
    ("format-ova", fixed(format="ova"), 2, ("`format`", '"vpc"')),
    ("fsType-zfs", fixed(fsType="zfs", partitionTableType="none"), 2,
     ("`fsType`", '"btrfs", "xfs"')),
    ("fsType-squashfs-root", fixed(fsType="squashfs", partitionTableType="none"), 2,
     ("`fsType`", "read-only")),
    ("label-too-long", fixed(label="a-label-that-is-too-long"), 2, ("`label`", "16 bytes")),
    ("touchEFIVars-legacy", fixed(touchEFIVars=True), 2, ("`touchEFIVars`", "efi")),
    ("touchEFIVars-no-firmware", fixed(touchEFIVars=True, partitionTableType="efi"), 2,
     ("`efiFirmware`", "OVMF")),
    ("efiVariables-missing", fixed(touchEFIVars=True, partitionTableType="efi",
                                   efiFirmware="/usr/share/OVMF/OVMF_CODE_4M.fd",
                                   efiVariables="/nonexistent/OVMF_VARS.fd"), 1,
     ("efiVariables: /nonexistent/OVMF_VARS.fd", "does not exist")),
    ("onlyNixStore-with-contents", lambda i: {"onlyNixStore": True, "installBootLoader": False,
                                              "partitionTableType": "none",
                                              **contents(entry(i.path("file")))}, 2,
     ("`onlyNixStore`", "contents must be empty")),
    ("rootFSUID-null-deterministic", fixed(rootFSUID=None), 2, ("`rootFSUID`", "non-null")),
    # contents entries: missing, extra, conflicting keys
    ("contents-not-an-object", fixed(contents=["/etc/x"]), 2,
     ("`contents[0]`", "attribute set")),
    ("contents-missing-source", fixed(contents=[{"target": "/etc/x"}]), 2,
     ("`contents[0]`", "an attribute set { source; target;")),
    ("contents-missing-target", lambda i: contents({"source": i.path("file")}), 2,
     ("`contents[0]`", "an attribute set { source; target;")),
    ("contents-extra-key", lambda i: contents(entry(i.path("file"), owner="root")), 2,
     ("`contents[0]`", "unknown attribute(s) owner")),
    ("contents-user-without-group", lambda i: contents(entry(i.path("file"), user="root")), 2,
     ("`contents[0]`", "none of {user, group} or both")),
    ("contents-group-without-user", lambda i: contents(entry(i.path("file"), group="root")),
     2, ("`contents[0]`", "none of {user, group} or both")),
    ("contents-mode-not-octal", lambda i: contents(entry(i.path("file"), mode="999")), 2,
     ("`contents[0].mode`", 'like "755"')),
    ("contents-mode-number", lambda i: contents(entry(i.path("file"), mode=755)), 2,
     ("`contents[0]`", "mode ? null")),
    ("contents-duplicate", lambda i: contents(entry(i.path("file"), "/etc/x"),
                                              entry(i.path("dir"), "etc/x/")), 2,
     ("`contents[1].target`", "remove one of them")),
    # contents targets: empty, the root, escaping, colliding
    ("target-empty", lambda i: contents(entry(i.path("file"), "")), 2,
     ("`contents[0]`", "source and target not empty")),
    ("target-root", lambda i: contents(entry(i.path("dir"), "/")), 1,
     ("contents[0].target", "duplicate entry")),
    ("target-dotdot", lambda i: contents(entry(i.path("file"), "../etc/x")), 2,
     ("`contents[0].target`", "from the image's /")),
    ("target-dotdot-inside", lambda i: contents(entry(i.path("file"), "/etc/../../x")), 2,
     ("`contents[0].target`", "'..'")),
    ("target-nix-store-file", lambda i: contents(entry(i.path("file"), "/nix/store")), 1,
     ("contents[0].target", "outside /nix/store")),
    ("target-a-store-path", lambda i: contents(entry(i.path("file"), i.closure.toplevel)), 1,
     ("contents[0].target", "outside /nix/store")),
    ("target-inside-a-store-path", lambda i: contents(entry(i.path("file"), i.closure.lib
                                                            + "/lib/libtest.txt")), 1,
     ("contents[0].target", "outside /nix/store")),
    ("target-nix-db", lambda i: contents(entry(i.path("file"), "/nix/var/nix/db/db.sqlite")),
     1, ("contents[0].target", "the Nix database")),
    ("target-system-profile", lambda i: contents(entry(i.path("dir"),
                                                       "/nix/var/nix/profiles/system")), 1,
     ("contents[0].target", "the system profile")),
    ("target-under-a-file", lambda i: contents(entry(i.path("file"), "/etc/app"),
                                               entry(i.path("file"), "/etc/app/x")), 1,
     ("contents[0].target", "change one of the targets")),
    # contents sources: missing, sockets, unreadable
    ("source-missing", lambda i: contents(entry(i.path("nonexistent"))), 1,
     ("contents[0].source", "does not exist")),
    ("source-glob-no-match", lambda i: contents(entry(i.path("dir") + "/*.none", "/etc")), 1,
     ("contents[0].source", "no file matches")),
    ("source-socket", lambda i: contents(entry(i.path("sock"))), 1,
     ("contents[0].source", "socket", "remove it")),
    ("source-dir-with-socket", lambda i: contents(entry(i.path("file"), "/etc/a"),
                                                  entry(i.path("sockdir"), "/run/s")), 1,
     ("contents[1].source", "sockdir/sock is a socket")),
    ("source-unreadable-file", lambda i: contents(entry(i.path("secret"))), 1,
     ("contents[0].source", "Permission denied", "make it readable")),
    ("source-unreadable-dir", lambda i: contents(entry(i.path("closed"))), 1,
     ("contents[0].source", "Permission denied")),
    ("source-dir-with-unreadable-file", lambda i: contents(entry(i.path("opendir"))), 1,
     ("contents[0].source", "opendir/secret: Permission denied")),
    # Symlink loops where a path must lead somewhere
    ("configFile-loop", lambda i: {"configFile": i.path("loop-a")}, 1,
     ("configFile:", "a loop")),
    ("toplevel-loop", lambda i: {"toplevel": i.path("loop-a")}, 1, ("toplevel:", "a loop")),
    ("closureInfo-loop", lambda i: {"closureInfo": i.path("loop-a")}, 1,
     ("closureInfo:", "a loop")),
    # baseName / name that could leave $out
    ("baseName-slash", fixed(baseName="../nixos"), 2, ("`baseName`", 'without "/"')),
    ("baseName-newline", fixed(baseName="a\nb"), 2, ("`baseName`", "control characters")),
    ("name-slash", fixed(name="a/b"), 2, ("`name`", "derivation name")),
    ("name-dotdot", fixed(name=".."), 2, ("`name`", 'not starting with "."')),
    # Malformed closureInfo
    ("closureInfo-missing", fixed(closureInfo="/nonexistent/closure-info"), 1,
     ("closureInfo:", "does not exist")),
    ("closureInfo-a-file", lambda i: {"closureInfo": i.closure_info("a-file")}, 1,
     ("closureInfo:", "as a directory")),
    ("closureInfo-no-store-paths", lambda i: {"closureInfo": i.closure_info("no-store-paths")},
     1, ("closureInfo:", "no readable store-paths", "pkgs.closureInfo")),
    ("closureInfo-binary-store-paths", lambda i: {"closureInfo": i.closure_info("binary")}, 1,
     ("closureInfo:", "store-paths", "pkgs.closureInfo")),
    ("closureInfo-no-registration", lambda i: {"closureInfo": i.closure_info("no-registration")},
     1, ("closureInfo:", "no registration file")),
    ("closureInfo-bad-registration",
     lambda i: {"closureInfo": i.closure_info("bad-registration")}, 1,
     ("from closureInfo", "registration", "nix-store")),
    ("closureInfo-path-not-in-store", lambda i: {"closureInfo": i.closure_info("gone-path")}, 1,
     ("closureInfo:", GONE, "not in the store")),
    ("closureInfo-relative-path", lambda i: {"closureInfo": i.closure_info("relative-path")}, 1,
     ("closureInfo:", "'nix/store/x'", "absolute store path")),
    ("channelSources-missing", fixed(channelSources=GONE), 1,
     ("channelSources:", "does not exist")),
    ("not-an-object", lambda i: {"__raw__": ["toplevel"]}, 2, ("`SPEC.json`", "JSON object")),
]
