# assertions and warnings: conditions modules state about the configuration.
# top-level.nix refuses a system whose assertions do not hold (listing their messages)
# and prints the warnings while evaluating it.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.assertions = mkOption {
    type = types.listOf types.unspecified;
    internal = true;
    default = [ ];
    example = [
      {
        assertion = false;
        message = "option a needs option b";
      }
    ];
    description = "Each `{ assertion; message; }`: building the system fails with `message` where `assertion` is false.";
  };
  options.warnings = mkOption {
    type = types.listOf types.str;
    internal = true;
    default = [ ];
    example = [ "option a is going away" ];
    description = "Messages printed when the system is evaluated.";
  };
}
