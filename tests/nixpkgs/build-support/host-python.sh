# The stand-in's python3: the host interpreter the project is installed for. Debian 12's
# /usr/bin/python3 is 3.11.2, older than what the project and its tests use (e.g.
# tarfile's extraction filters, 3.11.4); a newer host Python with pyparted, pyudev and
# pytest (a pyenv or /usr/local build, as .ci/setup installs into) is taken first.
set -eu
PATH=/usr/bin:/bin
chosen=
for candidate in /usr/local/bin/python3 /root/.pyenv/versions/3.*/bin/python3 /usr/bin/python3; do
    [ -x "$candidate" ] || continue
    if "$candidate" -c '
import sys
import parted, pyudev, pytest
sys.exit(0 if sys.version_info >= (3, 11, 4) else 1)' 2>/dev/null; then
        chosen=$candidate
        break
    fi
done
if [ -z "$chosen" ]; then
    echo "error: no host python3 >= 3.11.4 with pyparted, pyudev and pytest" >&2
    exit 1
fi
version=$("$chosen" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$out/bin" "$out/nix-support"
ln -s "$chosen" "$out/bin/python3"
ln -s "$chosen" "$out/bin/python"
ln -s "$chosen" "$out/bin/python$version"
echo "$chosen $("$chosen" --version 2>&1)" > "$out/nix-support/host-python"
