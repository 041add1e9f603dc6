# The lib the stand-in runs with: its own (./lib), or a nixpkgs lib directory named by
# the environment variable MDI_NIXPKGS_LIB (docs/nix.md, "Against a real nixpkgs lib").
# Flakes evaluate purely (no environment, nothing outside the flake), so for them the
# tests copy that directory into the checkout as ./external-lib.
let
  fromEnvironment = builtins.getEnv "MDI_NIXPKGS_LIB";
in
if fromEnvironment != "" && builtins.substring 0 1 fromEnvironment != "/" then
  throw "MDI_NIXPKGS_LIB=${fromEnvironment}: give the nixpkgs lib directory as an absolute path"
else if fromEnvironment != "" then
  import (/. + fromEnvironment)
else if builtins.pathExists ./external-lib then
  import ./external-lib
else
  import ./lib
