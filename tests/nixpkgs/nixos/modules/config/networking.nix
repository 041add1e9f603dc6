# networking.hostName, as nixpkgs' nixos/modules/tasks/network-interfaces.nix declares it.
{ lib, ... }:
{
  options.networking.hostName = lib.mkOption {
    default = "nixos";
    type = lib.types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
    description = "Host name written to /etc/hostname.";
  };
}
