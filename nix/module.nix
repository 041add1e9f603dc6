# The flake's nixosModules.default: makeDiskImage's arguments as typed NixOS options
# under `makeDiskImage.*`, and the image as config.system.build.diskImage:
#
#   nix build .#nixosConfigurations.HOST.config.system.build.diskImage
#
# Where the nixpkgs revision has image.modules (`nixos-rebuild build-image`), the same
# image is also the image variant `make-disk-image`:
#
#   nixos-rebuild build-image --image-variant make-disk-image --flake .#HOST
#
# Options left unset are not passed, so default.nix's defaults (the reference's) apply;
# the constant ones are repeated here only so that they show up as option defaults.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.makeDiskImage;
  opts = options.makeDiskImage;

  makeDiskImage = import ../default.nix;

  # makeDiskImage's arguments, formats and other choices: one file the engine reads too.
  interface = builtins.fromJSON (builtins.readFile ../make_disk_image/interface.json);

  contentsEntry = types.submodule {
    options = {
      source = mkOption {
        type = types.path;
        description = "A store path, file or glob (with `*`) to copy into the image.";
      };
      target = mkOption {
        type = types.str;
        description = "Where to put it in the root file system.";
      };
      mode = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "0640";
        description = "Mode of the copy (octal), recursively for a directory.";
      };
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Owner: a number, or a user name the image's system defines.";
      };
      group = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Group: a number, or a group name the image's system defines.";
      };
    };
  };

  choices = table: types.enum (map (entry: entry.name) table);
  named = table: lib.listToAttrs (map (entry: lib.nameValuePair entry.name entry) table);
  formats = named interface.formats;
  # A string matching an interface.json type's pattern (default.nix checks the rest).
  matching = type: types.strMatching interface.argumentTypes.${type}.pattern;
  # The choices of an argument whose values are one of interface.json's tables: its
  # oneOf rule names the table.
  choiceTable =
    argument:
    interface.${(lib.findFirst (rule: rule.rule == "oneOf") null argument.rules).table};
  # An interface.json argument type as an option type.
  optionTypes = argument: {
    diskSize = types.either (types.either (choices interface.diskSizeWords) (matching "diskSize")) types.ints.positive;
    size = types.either (matching "size") types.ints.unsigned;
    contents = types.listOf contentsEntry;
    choice = choices (choiceTable argument);
    bool = types.bool;
    package = types.package;
    path = types.path;
    str = types.str;
    lines = types.lines;
    nullOrPath = types.nullOr types.path;
    positiveInt = types.ints.positive;
    guid = matching "guid";
    nullOrGuid = types.nullOr (matching "nullOrGuid");
    storePaths = types.listOf types.package;
    compression = types.nullOr (
      types.enum (lib.unique (lib.concatMap (fs: fs.compressions) interface.fsTypes))
    );
  }.${argument.type};
  # A constant default is the option's default; a default computed from other
  # arguments is only shown (defaultText), and default.nix computes it.
  # The choices of an argument whose values are one of interface.json's tables, listed
  # with what each is, in the option's description.
  describeChoices =
    table:
    lib.concatMapStrings (
      choice:
      "\n- `${choice.name}`${lib.optionalString (choice.origin == "extension") " (extension)"}: ${choice.description}"
    ) table;
  argumentOption =
    argument:
    mkOption (
      {
        type = optionTypes argument;
        description =
          argument.description
          + lib.optionalString (argument.type == "choice") ("\n" + describeChoices (choiceTable argument))
          + lib.optionalString (argument.type == "diskSize") ("\n" + describeChoices interface.diskSizeWords);
      }
      // (
        if argument ? default then
          { inherit (argument) default; }
        else
          { defaultText = lib.literalMD "`${argument.defaultText}`"; }
      )
    );
  # pkgs, lib and config are the system's own.
  optionArguments = named (builtins.filter (argument: argument.type != "context") interface.arguments);

  # What the user defined (or the constant defaults), as makeDiskImage's arguments.
  arguments =
    lib.filterAttrs (name: _: opts.${name}.isDefined) (removeAttrs cfg [
      "contents"
      "repart"
    ])
    // {
      contents = map (lib.filterAttrs (_: value: value != null)) cfg.contents;
    };

  diskImage = makeDiskImage ({ inherit pkgs lib config; } // arguments);
in
{
  # image.repart's definitions built by the engine (makeDiskImage.repart.*).
  imports = [ ./repart.nix ];

  options.makeDiskImage = lib.mapAttrs (_: argumentOption) optionArguments;

  options.system.build.diskImage = mkOption {
    type = types.package;
    readOnly = true;
    description = "The disk image makeDiskImage builds from this system and `makeDiskImage.*`.";
  };

  config = lib.mkMerge [
    { system.build.diskImage = diskImage; }
    # nixos-rebuild build-image: an image variant, where nixpkgs has them.
    (lib.optionalAttrs (options ? image.modules) {
      image.modules.make-disk-image =
        { config, modulesPath, ... }:
        {
          imports = [ (modulesPath + "/image/file-options.nix") ];
          makeDiskImage.baseName = lib.mkDefault config.image.baseName;
          image.extension = formats.${config.makeDiskImage.format}.extension;
          system.build.image = config.system.build.diskImage;
        };
    })
  ];
}
