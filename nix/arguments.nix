# makeDiskImage's arguments checked at evaluation, before anything is built: interface.json's
# argument table (each argument's type, rules and their messages) applied to the call.
# Every message starts with "makeDiskImage: argument `NAME`".
#
# The table names the types and rules; this file and the engine
# (make_disk_image/arguments.py) each implement them and render the same messages from
# the same templates: tests/test_interface.py sends the same wrong sets through both and
# compares the two messages. Rules run in the table's order, types first, as in the engine.
#
# `arguments` is true, or throws the first failure; `computed` checks what default.nix
# computes (the image's platform) the same way. Nothing here forces pkgs, config or a
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
  tables = {
    partitionTableTypes = named interface.partitionTableTypes;
    fsTypes = named interface.fsTypes;
    formats = named interface.formats;
  };
  quoted = list: lib.concatMapStringsSep ", " (name: "\"${name}\"") list;
  common.diskSizeWords = quoted (names interface.diskSizeWords);
  render =
    template: values:
    builtins.replaceStrings (map (name: "@${name}@") (builtins.attrNames values)) (
      builtins.attrValues values
    ) template;
  fail = argument: message: throw "makeDiskImage: argument `${argument}`: ${message}";

  # A value in a message: primitives as JSON writes them, anything else by its type (a
  # derivation is not shown: that could force it). The engine's `shown` is the same.
  shown =
    value:
    if builtins.isString value || builtins.isInt value || builtins.isBool value || value == null then
      builtins.toJSON value
    else if builtins.isPath value then
      toString value
    else
      "a ${builtins.typeOf value}";

  matches = pattern: value: builtins.match pattern value != null;
  typeMatches = type: value: matches interface.argumentTypes.${type}.pattern value;
  isText = value: builtins.isString value && value != "";
  isPathLike = value: builtins.isPath value || isText value || lib.isDerivation value;
  isOptionalString = entry: key: (entry.${key} or null) == null || builtins.isString entry.${key};
  isContentsEntry =
    entry:
    builtins.isAttrs entry
    && entry ? source
    && entry ? target
    && isPathLike entry.source
    && isText entry.target
    && builtins.all (isOptionalString entry) [
      "mode"
      "user"
      "group"
    ];

  # interface.json's argument types: what a value may be.
  types = {
    diskSize =
      value:
      builtins.isInt value
      || (
        builtins.isString value
        && (builtins.elem value (names interface.diskSizeWords) || typeMatches "diskSize" value)
      );
    size = value: (builtins.isInt value && value >= 0) || (builtins.isString value && typeMatches "size" value);
    contents = builtins.isList;
    contentsEntry = isContentsEntry;
    choice = builtins.isString;
    bool = builtins.isBool;
    package = builtins.isAttrs;
    path = isPathLike;
    str = builtins.isString;
    lines = builtins.isString;
    nullOrPath = value: value == null || isPathLike value;
    positiveInt = value: builtins.isInt value && value > 0;
    guid = value: builtins.isString value && typeMatches "guid" value;
    nullOrGuid = value: value == null || (builtins.isString value && typeMatches "nullOrGuid" value);
    compression = value: value == null || builtins.isString value;
    storePaths = builtins.isList;
    storePath = isPathLike;
    strList = builtins.isList;
    text = isText;
    nullOrStr = value: value == null || isText value;
  };

  MiB = 1024 * 1024;
  maxSize = 1152921504606846976; # 2^60 (make_disk_image/utils.py MAX_SIZE)
  # diskSize's number of MiB (null for a word); digits beyond what an int holds are more
  # than 2^60 bytes anyway.
  mib =
    value:
    if builtins.isInt value then
      value
    else if builtins.elem value (names interface.diskSizeWords) then
      null
    else
      let
        digits = builtins.head (builtins.match "0*([0-9]*)" value);
      in
      if builtins.stringLength digits > 15 then maxSize else if digits == "" then 0 else builtins.fromJSON digits;
  # Bytes for a size numfmt --from=iec reads (the type's pattern: groups 0, number, and
  # 2, suffix); a fraction is rounded up, as numfmt and the engine do.
  power = {
    "" = 0;
    k = 1;
    K = 1;
    M = 2;
    G = 3;
    T = 4;
    P = 5;
    E = 6;
    Z = 7;
    Y = 8;
  };
  bytes =
    value:
    if builtins.isInt value then
      value
    else
      let
        groups = builtins.match interface.argumentTypes.size.pattern value;
        number = builtins.head groups;
        exponent = power.${builtins.elemAt groups 2};
        parts = builtins.match "0*([0-9]*)(\\.([0-9]*))?" number;
        whole = builtins.head parts;
        fraction = builtins.elemAt parts 2;
        factor = builtins.foldl' (product: _: product * 1024) 1 (builtins.genList (x: x) exponent);
        wholeInt =
          if whole == "" then
            0
          else if builtins.stringLength whole > 15 then
            maxSize + 1
          else
            builtins.fromJSON whole;
        fractionBytes = if fraction == null then 0 else builtins.ceil (builtins.fromJSON "0.${fraction}" * factor);
      in
      # Z and Y: 2^70 bytes and more, unless the number is 0.
      if exponent > 6 then
        (if matches "[0.]*" number then 0 else maxSize + 1)
      else if wholeInt > maxSize / factor then
        maxSize + 1
      else
        wholeInt * factor + fractionBytes;

  # interface.json's rules, on the values `a`: null when the rule holds, else what its
  # message names.
  rules =
    a:
    let
    # The argument's filesystem, when fsType is one (its oneOf rule reports it otherwise).
  fsFound =
    holds: found:
    let
      fs = tables.fsTypes.${a.fsType} or null;
    in
    if fs == null || holds fs then null else { fsType = a.fsType; } // found;
  when = condition: found: if condition then found else null;
  layout = tables.partitionTableTypes.${a.partitionTableType} or null;
  # The platform rules: only where the image's system has no BIOS and a boot loader is
  # installed (the engine's `system` null is the builder's; default.nix always names it).
  withoutBios =
    holds: found:
    let
      platform = interface.platforms.${a.system} or null;
    in
    if platform == null || platform.bios || !a.installBootLoader || holds platform then
      null
    else
      { system = a.system; } // found;
  biosDevices = builtins.filter (device: device != "nodev") a.grubDevices;
  in {
    positiveMiB = name: rule: let n = mib a.${name}; in when (n != null && n <= 0) { };
    mibAtMost1E = name: rule: let n = mib a.${name}; in when (n != null && n > maxSize / MiB) { };
    sizeAtMost1E = name: rule: when (bytes a.${name} > maxSize) { };
    bootPartitionFits =
      name: rule:
      let
        start = if layout == null then null else layout.bootStartMiB;
        end = bytes a.${name} / MiB + 1;
      in
      when (start != null && end <= start) {
        endMiB = toString end;
        minimumMiB = toString start;
        partitionTableType = shown a.partitionTableType;
      };
    ownerWhole =
      name: rule:
      let
        half = entry: ((entry.user or null) == null) != ((entry.group or null) == null);
        list = a.${name};
        indexed = builtins.genList (index: {
          inherit index;
          entry = builtins.elemAt list index;
        }) (builtins.length list);
        first = lib.findFirst ({ entry, ... }: half entry) null indexed;
      in
      when (first != null) {
        argument = "${name}[${toString first.index}]";
        target = first.entry.target;
        half = if (first.entry.user or null) != null then "user" else "group";
      };
    oneOf =
      name: rule:
      when (!(tables.${rule.table} ? ${a.${name}})) {
        choices = quoted (names interface.${rule.table});
      };
    efiVariablesLayout = name: rule: when (a.${name} && layout != null && !layout.efiVariables) { };
    readOnlyHoldsOnlyTheStore =
      name: rule:
      fsFound (fs: !fs.readOnly || a.onlyNixStore) {
        writable = quoted (names (builtins.filter (fs: !fs.readOnly) interface.fsTypes));
      };
    readOnlyIsTheWholeDisk =
      name: rule:
      fsFound (fs: !fs.readOnly || a.partitionTableType == "none") {
        partitionTableType = shown a.partitionTableType;
      };
    inPartitionTable =
      name: rule:
      fsFound (fs: fs.inPartitionTable || a.partitionTableType == "none") {
        inPartitionTable = quoted (names (builtins.filter (fs: fs.inPartitionTable) interface.fsTypes));
      };
    labelFits =
      name: rule:
      fsFound (fs: fs.labelBytes == 0 || builtins.stringLength a.${name} <= fs.labelBytes) {
        labelBytes = toString tables.fsTypes.${a.fsType}.labelBytes;
      };
    atLeast256 = name: rule: when (a.${name} < 256) { };
    onlyTheStore =
      name: rule:
      when (
        a.${name}
        && (a.contents != [ ] || a.configFile != null || a.installBootLoader)
      ) { };
    matches = name: rule: when (!matches rule.pattern a.${name}) { };
    givenWhenDeterministicExt4 =
      name: rule:
      when (a.fsType == "ext4" && a.deterministic && a.${name} == null) { };
    nullWithoutUUID = name: rule: fsFound (fs: fs.takesUUID || a.${name} == null) { };
    compressedFs =
      name: rule:
      fsFound (fs: a.${name} == null || fs.compressions != [ ]) {
        compressedFsTypes = quoted (names (builtins.filter (fs: fs.compressions != [ ]) interface.fsTypes));
      };
    compressionOfFs =
      name: rule:
      fsFound (fs: a.${name} == null || fs.compressions == [ ] || builtins.elem a.${name} fs.compressions) {
        compressions = quoted tables.fsTypes.${a.fsType}.compressions;
      };
    hardLinksInFs =
      name: rule:
      fsFound (fs: fs.hardLinks || !a.${name}) {
        hardLinks = quoted (names (builtins.filter (fs: fs.hardLinks) interface.fsTypes));
      };
      bootableOnPlatform =
      name: rule:
      withoutBios (platform: builtins.elem a.partitionTableType platform.bootablePartitionTableTypes) {
        partitionTableType = shown a.partitionTableType;
      };
    biosGrubOnPlatform =
      name: rule:
      withoutBios (_: biosDevices == [ ]) { devices = builtins.concatStringsSep ", " biosDevices; };
    # SMM where the platform's firmware has none, boot loader or not.
    smmOnPlatform =
      name: rule:
      let
        platform = interface.platforms.${a.system} or null;
      in
      when (platform != null && !platform.smm && a.ovmfSystemManagementModeRequired) {
        system = a.system;
      };
  };

  # A value of a type, and each element of a list type: true, or the failure.
  typeCheck =
    name: type: value:
    let
      expected = render interface.argumentTypes.${type}.expected common;
      elements = interface.argumentTypes.${type}.elements or null;
    in
    (types.${type} value || fail name "must be ${expected}, but is: ${shown value}")
    && (
      elements == null
      || builtins.all (index: typeCheck "${name}[${toString index}]" elements (builtins.elemAt value index)) (
        builtins.genList (index: index) (builtins.length value)
      )
    );
  # What the caller passed, in the table's order: the first wrong type is the engine's.
  typeChecks = map (row: typeCheck row.name row.type given.${row.name}) (
    builtins.filter (row: row.type != "context" && given ? ${row.name}) interface.arguments
  );

  # The rules default.nix can see (not those about what it computes itself), on `values`.
  ruleChecks =
    values: rows:
    lib.concatMap (
      row:
      map (
        rule:
        let
          found = (rules values).${rule.rule} row.name rule;
          message = render rule.message (
            common
            // {
              value = shown values.${row.name};
              reference = interface.referenceMessages.${row.name} or "";
            }
            // removeAttrs found [ "argument" ]
          );
        in
        found == null || fail (found.argument or rule.argument or row.name) message
      ) (builtins.filter (rule: (rule.checkedBy or "nix") != "engine") (row.rules or [ ]))
    ) rows;
  all = builtins.all (ok: ok);
in
{
  # Types first: the rules compare values of the right types.
  arguments = all typeChecks && all (ruleChecks arguments interface.arguments);
  # What default.nix computes for the spec (its rules, after the arguments' in the engine
  # too), given the image's system, grubDevices and ovmfSystemManagementModeRequired.
  computed = values: all (ruleChecks (arguments // values) interface.computed);
}
