# The part of nixpkgs' `lib` that default.nix, flake.nix and the stand-in itself use,
# with nixpkgs' names, signatures and semantics (re-implemented on builtins).
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    genList
    head
    isAttrs
    isList
    length
    listToAttrs
    mapAttrs
    stringLength
    substring
    tail
    ;

  lib = rec {
    inherit
      attrNames
      concatLists
      concatStringsSep
      elem
      filter
      foldl'
      head
      mapAttrs
      tail
      ;
    inherit (builtins) all any map toString replaceStrings;

    version = "25.11pre-standin";

    # trivial
    id = x: x;
    const = x: _: x;
    flip =
      f: a: b:
      f b a;
    fix =
      f:
      let
        x = f x;
      in
      x;
    boolToString = b: if b then "true" else "false";

    # lists
    optional = cond: elem: if cond then [ elem ] else [ ];
    optionals = cond: elems: if cond then elems else [ ];
    toList = x: if isList x then x else [ x ];
    subtractLists = e: filter (x: !(elem x e));
    unique = foldl' (acc: e: if elem e acc then acc else acc ++ [ e ]) [ ];
    last = list: builtins.elemAt list (length list - 1);
    imap0 = f: list: genList (n: f n (builtins.elemAt list n)) (length list);
    concatMap = f: list: concatLists (map f list);

    # strings
    optionalString = cond: string: if cond then string else "";
    concatMapStringsSep =
      sep: f: list:
      concatStringsSep sep (map f list);
    concatMapStrings = f: list: concatStringsSep "" (map f list);
    hasPrefix =
      pref: str: substring 0 (stringLength pref) str == pref;
    hasSuffix =
      suffix: content:
      let
        lenContent = stringLength content;
        lenSuffix = stringLength suffix;
      in
      lenContent >= lenSuffix && substring (lenContent - lenSuffix) lenContent content == suffix;
    removePrefix =
      prefix: str:
      if hasPrefix prefix str then
        substring (stringLength prefix) (stringLength str - stringLength prefix) str
      else
        str;
    escapeShellArg = arg: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg)}'";
    escapeShellArgs = concatMapStringsSep " " escapeShellArg;
    makeSearchPath =
      subDir: paths: concatStringsSep ":" (map (p: "${p}/${subDir}") (filter (x: x != null) paths));
    makeBinPath = makeSearchPath "bin";

    # attrsets
    optionalAttrs = cond: as: if cond then as else { };
    genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
    filterAttrs =
      pred: set:
      listToAttrs (
        concatMap (
          name:
          let
            v = set.${name};
          in
          if pred name v then [ { inherit name; value = v; } ] else [ ]
        ) (attrNames set)
      );
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
    recursiveUpdate =
      lhs: rhs:
      lhs
      // mapAttrs (
        name: value:
        if isAttrs value && lhs ? ${name} && isAttrs lhs.${name} && !(isDerivation value) then
          recursiveUpdate lhs.${name} value
        else
          value
      ) rhs;
    isDerivation = value: value.type or null == "derivation";
    getExe =
      x: "${x}/bin/${x.meta.mainProgram or (throw "getExe: ${x.name or "package"} has no meta.mainProgram")}";

    # asserts
    assertMsg = pred: msg: pred || builtins.throw msg;
    assertOneOf =
      name: val: xs:
      assertMsg (elem val xs) "${name} must be one of ${builtins.toJSON xs}, but is: ${builtins.toJSON val}";

    # derivations
    overrideDerivation =
      drv: f:
      let
        newDrv = derivation (drv.drvAttrs // (f drv));
      in
      newDrv
      // (drv.passthru or { })
      // {
        meta = drv.meta or { };
        passthru = drv.passthru or { };
      };

    # sources: builtins.path with a filter, as nixpkgs' cleanSourceWith.
    cleanSourceFilter =
      name: type:
      let
        baseName = baseNameOf (toString name);
      in
      !(
        (type == "directory" && (baseName == ".git" || baseName == ".svn" || baseName == "CVS"))
        || hasSuffix "~" baseName
        || builtins.match "^\\.sw[a-z]$" baseName != null
        || builtins.match "^\\..*\\.sw[a-z]$" baseName != null
        || hasSuffix ".o" baseName
        || hasSuffix ".so" baseName
        || (type == "symlink" && hasPrefix "result" baseName)
        || type == "unknown"
      );
    cleanSourceWith =
      {
        src,
        filter ? _path: _type: true,
        name ? null,
      }:
      let
        orig = src.origSrc or src;
        parentFilter = src.filter or (_path: _type: true);
        combined = path: type: parentFilter path type && filter path type;
      in
      {
        _isLibCleanSourceWith = true;
        origSrc = orig;
        filter = combined;
        name = if name != null then name else src.name or "source";
        outPath = builtins.path {
          path = orig;
          filter = combined;
          name = if name != null then name else src.name or "source";
        };
      };
    cleanSource = src: cleanSourceWith {
      filter = cleanSourceFilter;
      inherit src;
    };

    # Flake helpers that nixpkgs' lib offers.
    systems.flakeExposed = [
      "x86_64-linux"
      "aarch64-linux"
    ];
  };
in
lib
