# A Debian package file as a fixed-output derivation (the stand-in's fetchurl for
# cross.nix): copied from the download cache testsys/guestroot.py fills when it is there,
# else fetched with apt's own client. Nix checks the file against the list's sha256.
set -eu
PATH=/usr/bin:/bin:/usr/sbin:/sbin
if [ -f "$cache/$file" ]; then
    cp "$cache/$file" "$out"
else
    cd "$TMPDIR"
    apt-get -q -o APT::Architecture="$arch" download "$package=$version"
    mv ./*.deb "$out"
fi
