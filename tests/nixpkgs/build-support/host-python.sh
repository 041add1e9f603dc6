# The stand-in's python3: a host interpreter that imports pyparted, pyudev, pytest and
# setuptools (the stand-in's python3Packages link to its modules). Debian's own python3
# comes first: .ci/setup installs those as Debian packages for it, and the unprivileged
# build user can read it (a pyenv under /root it cannot). Others are taken only where
# Debian's lacks a module (a machine set up by hand).
set -eu
PATH=/usr/bin:/bin
chosen=
for candidate in /usr/bin/python3 /usr/local/bin/python3 /root/.pyenv/versions/3.*/bin/python3; do
    [ -x "$candidate" ] || continue
    if "$candidate" -c '
import sys
import parted, pyudev, pytest, setuptools
sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        chosen=$candidate
        break
    fi
done
if [ -z "$chosen" ]; then
    echo "error: no host python3 >= 3.11 with pyparted, pyudev, pytest and setuptools" \
        "(apt-get install python3-parted python3-pyudev python3-pytest python3-setuptools)" >&2
    exit 1
fi
version=$("$chosen" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$out/bin" "$out/nix-support"
ln -s "$chosen" "$out/bin/python3"
ln -s "$chosen" "$out/bin/python"
ln -s "$chosen" "$out/bin/python$version"
echo "$chosen $("$chosen" --version 2>&1)" > "$out/nix-support/host-python"
