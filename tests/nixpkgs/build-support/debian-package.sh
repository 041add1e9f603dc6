# Builds a package whose bin/ links to the executables of Debian packages installed on
# this host (dpkg -L), and whose lib/python3.11/site-packages links to their Python
# modules. This is how the stand-in's tools "point at Debian's binaries".
set -eu
PATH=/usr/bin:/bin:/usr/sbin:/sbin
mkdir -p "$out/bin" "$out/nix-support"
for pkg in $debianPackages; do
    version=$(dpkg-query -W -f '${Version}' "$pkg") || {
        echo "error: Debian package $pkg is not installed on this host (apt-get install $pkg)" >&2
        exit 1
    }
    echo "$pkg $version" >>"$out/nix-support/debian-packages"
    dpkg -L "$pkg" | while IFS= read -r file; do
        case "$file" in
            /bin/* | /sbin/* | /usr/bin/* | /usr/sbin/*)
                if [ -f "$file" ] && [ -x "$file" ] && [ ! -e "$out/bin/${file##*/}" ]; then
                    ln -s "$file" "$out/bin/${file##*/}"
                fi
                ;;
            /usr/lib/python3/dist-packages/*)
                rel=${file#/usr/lib/python3/dist-packages/}
                case "$rel" in */*) ;; *)
                    mkdir -p "$out/lib/python3.11/site-packages"
                    [ -e "$out/lib/python3.11/site-packages/$rel" ] \
                        || ln -s "$file" "$out/lib/python3.11/site-packages/$rel"
                    ;;
                esac
                ;;
        esac
    done
done
for link in $extraLinks; do
    ln -sfn "${link#*=}" "$out/bin/${link%%=*}"
done
if [ -z "$(ls -A "$out/bin")" ]; then rmdir "$out/bin"; fi
