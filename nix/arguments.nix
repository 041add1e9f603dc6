# makeDiskImage's arguments checked at evaluation, before anything is built: every
# assert of the reference (nixpkgs' make-disk-image.nix), with its message, and the type
# of each argument. Every message starts with "makeDiskImage: argument `NAME`".
#
# The choices (formats, partition table types, filesystems: which may sit in a partition
# table, which are read-only) are interface.json's, which the engine checks against too:
# allowing a filesystem in a partition table is a change of data there.
#
# Returns true, or throws the first failure. Nothing here forces pkgs, config or a
# derivation: a wrong argument stops evaluation before the toplevel or the closure.
{ lib, interface }:
{
  # What the caller passed (types are checked only there: the defaults are right).
  given,
  # Every argument but pkgs, lib and config, with its default applied.
  arguments,
}:
let
  named = table: lib.listToAttrs (map (entry: lib.nameValuePair entry.name entry) table);
  names = table: map (entry: entry.name) table;
  fsTypes = named interface.fsTypes;
  partitionTableTypes = named interface.partitionTableTypes;
  messages = interface.referenceMessages;
  allCompressions = lib.unique (lib.concatMap (fs: fs.compressions) interface.fsTypes);

  prefix = argument: "makeDiskImage: argument `${argument}`";
  check = argument: condition: message: lib.assertMsg condition "${prefix argument}: ${message}";
  oneOf = argument: table: lib.assertOneOf (prefix argument) arguments.${argument} (names table);
  # A value in a message: primitives as Nix writes them, anything else by its type (a
  # derivation is not shown: that could force it).
  shown =
    value:
    if builtins.isString value then
      builtins.toJSON value
    else if builtins.isInt value || builtins.isBool value || value == null then
      builtins.toJSON value
    else if builtins.isPath value then
      toString value
    else
      "a ${builtins.typeOf value}";

  isPathLike = value: builtins.isPath value || builtins.isString value || lib.isDerivation value;
  guidPattern = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}";
  isGuid = value: builtins.isString value && builtins.match guidPattern value != null;
  isOptionalString = entry: key: !(entry ? ${key}) || entry.${key} == null || builtins.isString entry.${key};
  isContentsEntry =
    entry:
    builtins.isAttrs entry
    && entry ? source
    && entry ? target
    && isPathLike entry.source
    && builtins.isString entry.target
    && builtins.all (isOptionalString entry) [
      "mode"
      "user"
      "group"
    ];

  # interface.json's argument types: what a value must be, and how it is told.
  types = {
    diskSize = {
      test =
        value:
        (builtins.isInt value && value > 0)
        || (
          builtins.isString value
          && (builtins.elem value (names interface.diskSizeWords) || builtins.match "[0-9]+" value != null)
        );
      expected = "a number of MiB or one of ${
        lib.concatMapStringsSep ", " (word: "\"${word}\"") (names interface.diskSizeWords)
      }";
    };
    size = {
      test = value: builtins.isString value || (builtins.isInt value && value >= 0);
      expected = "a size such as \"512M\" (numfmt --from=iec)";
    };
    contents = {
      test = value: builtins.isList value && builtins.all isContentsEntry value;
      expected = "a list of { source; target; mode ? null; user ? null; group ? null; } (strings but source, a path)";
    };
    # The choices are checked against their tables below (lib.assertOneOf).
    partitionTableType = {
      test = builtins.isString;
      expected = "a string";
    };
    fsType = types.partitionTableType;
    format = types.partitionTableType;
    bool = {
      test = builtins.isBool;
      expected = "true or false";
    };
    package = {
      test = builtins.isAttrs;
      expected = "a derivation such as pkgs.OVMF.fd";
    };
    path = {
      test = isPathLike;
      expected = "a path or a derivation";
    };
    str = {
      test = builtins.isString;
      expected = "a string";
    };
    lines = types.str;
    nullOrPath = {
      test = value: value == null || isPathLike value;
      expected = "null, a path or a derivation";
    };
    positiveInt = {
      test = value: builtins.isInt value && value > 0;
      expected = "a positive integer";
    };
    guid = {
      test = isGuid;
      expected = "a GUID string (8-4-4-4-12 hexadecimal digits)";
    };
    nullOrGuid = {
      test = value: value == null || isGuid value;
      expected = "null or a UUID string (8-4-4-4-12 hexadecimal digits)";
    };
    compression = {
      test = value: value == null || builtins.elem value allCompressions;
      expected = "null or one of ${lib.concatMapStringsSep ", " builtins.toJSON allCompressions}";
    };
    storePaths = {
      test = value: builtins.isList value && builtins.all isPathLike value;
      expected = "a list of store paths (derivations or paths)";
    };
  };
  typeChecks = lib.mapAttrsToList (
    argument: value:
    let
      type = types.${interface.arguments.${argument}.type};
    in
    check argument (type.test value) "must be ${type.expected}, but is: ${shown value}"
  ) (removeAttrs given [ "pkgs" "lib" "config" ]);

  inherit (arguments)
    partitionTableType
    fsType
    contents
    onlyNixStore
    ;
  fs = fsTypes.${fsType};
  inPartitionTable = names (builtins.filter (fs: fs.inPartitionTable) interface.fsTypes);
  writable = names (builtins.filter (fs: !fs.readOnly) interface.fsTypes);
  ownedByHalf = entry: ((entry.user or null) == null) != ((entry.group or null) == null);

  # In the engine's order (make_disk_image/spec.py), so that a set with two faults
  # names the same argument at evaluation and in the engine.
  crossChecks = [
    (oneOf "partitionTableType" interface.partitionTableTypes)
    (oneOf "format" interface.formats)
    (check "contents" (!(builtins.any ownedByHalf contents)) messages.contents)
    (check "rootFSUID" (
      fsType == "ext4" && arguments.deterministic -> arguments.rootFSUID != null
    ) messages.rootFSUID)
    (oneOf "fsType" interface.fsTypes)
    (check "fsType" (fs.readOnly -> onlyNixStore) ''
      "${fsType}" is read-only: it can hold only a store image (onlyNixStore = true, partitionTableType = "none"), not a root the system writes; use one of ${lib.concatStringsSep ", " writable}'')
    (check "partitionTableType" (fs.readOnly -> partitionTableType == "none") ''
      "${partitionTableType}": a read-only ${fsType} store image is the whole image; use partitionTableType = "none"'')
    (check "fsType" (partitionTableType != "none" -> fs.inPartitionTable)
      "\"${fsType}\": ${messages.fsType} (in a partition table: ${lib.concatStringsSep ", " inPartitionTable})"
    )
    (check "label" (fs.labelBytes == 0 || builtins.stringLength arguments.label <= fs.labelBytes)
      "\"${arguments.label}\" is longer than the ${toString fs.labelBytes} bytes a ${fsType} label holds"
    )
    (check "compression" (arguments.compression == null || builtins.elem arguments.compression fs.compressions) (
      if fs.compressions == [ ] then
        "\"${arguments.compression}\": fsType ${fsType} is not compressed; only store images (fsType erofs or squashfs) take a compression, leave it null"
      else
        "\"${arguments.compression}\" is not a ${fsType} compression; use one of ${lib.concatMapStringsSep ", " builtins.toJSON fs.compressions}"
    ))
    (check "deduplicate" (arguments.deduplicate -> fs.hardLinks)
      "fsType \"${fsType}\" is made without hard links (xfs: mkfs.xfs -p protofile); set deduplicate = false, or use fsType ext4 or btrfs"
    )
    (check "touchEFIVars" (
      arguments.touchEFIVars -> partitionTableTypes.${partitionTableType}.efiVariables
    ) messages.touchEFIVars)
    (check "onlyNixStore" (
      onlyNixStore -> contents == [ ] && arguments.configFile == null && !arguments.installBootLoader
    ) messages.onlyNixStore)
  ];
in
# Types first: the cross checks compare values of the right types.
builtins.all (ok: ok) typeChecks && builtins.all (ok: ok) crossChecks
