# Builds a package whose bin/ links to the executables of Debian packages installed on
# this host (dpkg -L). This is how the stand-in's tools "point at Debian's binaries".
# $optionalDebianPackages are linked when installed and skipped otherwise.
set -eu
PATH=/usr/bin:/bin:/usr/sbin:/sbin
mkdir -p "$out/bin" "$out/nix-support"
for pkg in $debianPackages $optionalDebianPackages; do
    status=$(dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null) || status=
    if [ "$status" != installed ]; then
        case " $optionalDebianPackages " in *" $pkg "*) continue ;; esac
        echo "error: Debian package $pkg is not installed on this host (apt-get install $pkg)" >&2
        exit 1
    fi
    echo "$pkg $(dpkg-query -W -f '${Version}' "$pkg")" >>"$out/nix-support/debian-packages"
    dpkg -L "$pkg" | while IFS= read -r file; do
        case "$file" in
            /bin/* | /sbin/* | /usr/bin/* | /usr/sbin/*)
                if [ -f "$file" ] && [ -x "$file" ] && [ ! -e "$out/bin/${file##*/}" ]; then
                    ln -s "$file" "$out/bin/${file##*/}"
                fi
                ;;
        esac
    done
done
for link in $extraLinks; do
    ln -sfn "${link#*=}" "$out/bin/${link%%=*}"
done
if [ -z "$(ls -A "$out/bin")" ]; then rmdir "$out/bin"; fi
