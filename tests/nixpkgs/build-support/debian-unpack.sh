# A package of another architecture from Debian packages, laid out as a nixpkgs package
# ($out/bin, $out/lib, ...): the packages are unpacked (dpkg-deb -x, no maintainer
# script), /usr merged into $out, and every dynamically linked program in bin/ and sbin/
# pointed at the dynamic loader and libraries of $libs (the set's C library package),
# as nixpkgs' binaries point at their glibc. Nothing here runs the unpacked programs.
set -eu
PATH=/usr/bin:/bin:/usr/sbin:/sbin
root=$TMPDIR/root
mkdir -p "$root" "$out"
for deb in $debs; do
    # Without setuid bits, which the store does not keep.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root" --no-same-owner --no-same-permissions
done
if [ -d "$root/usr" ]; then
    cp -a "$root/usr/." "$out/"
    rm -rf "$root/usr"
fi
cp -a "$root/." "$out/"
# Links to /usr/X or /X point into $out.
find "$out" -type l -lname '/*' | while IFS= read -r link; do
    target=$(readlink "$link")
    ln -sfn "$out${target#/usr}" "$link"
done
if [ -d "$out/sbin" ]; then
    mkdir -p "$out/bin"
    for program in "$out"/sbin/*; do
        [ -e "$out/bin/${program##*/}" ] || ln -s "../sbin/${program##*/}" "$out/bin/"
    done
fi
libs=${libs:-$out}
rpath=$(find "$libs/lib" -maxdepth 1 -type d -name '*-linux-gnu*' | sort | paste -sd:)
for program in "$out"/bin/* "$out"/sbin/*; do
    [ -f "$program" ] && [ ! -L "$program" ] || continue
    interpreter=$(patchelf --print-interpreter "$program" 2>/dev/null) || continue
    patchelf --set-interpreter "$libs${interpreter#/usr}" --force-rpath --set-rpath "$rpath" \
        "$program"
done
eval "${postUnpack:-}"
