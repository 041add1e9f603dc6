# The licences the project's packages name.
{ lib }:
{
  mit = {
    spdxId = "MIT";
    shortName = "mit";
    fullName = "MIT License";
    free = true;
    redistributable = true;
  };
}
