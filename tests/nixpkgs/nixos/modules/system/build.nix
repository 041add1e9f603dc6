# system.build: the system's build products by name. Modules add to it freely; an
# entry defined twice is an error (each is defined once, by the module it belongs to).
{ lib, ... }:
{
  options.system.build = lib.mkOption {
    default = { };
    description = "Derivations the system is made of and built into, by name.";
    type = lib.types.submoduleWith {
      modules = [ { freeformType = lib.types.lazyAttrsOf (lib.types.uniq lib.types.unspecified); } ];
    };
  };
}
