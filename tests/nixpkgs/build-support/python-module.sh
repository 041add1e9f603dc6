# A python3Packages entry of the stand-in: links to the modules $modules as the
# stand-in's python3 (the host interpreter) imports them, under lib/python3.11/site-packages.
set -eu
PATH=/usr/bin:/bin
site="$out/lib/python3.11/site-packages"
mkdir -p "$site" "$out/nix-support"
for module in $modules; do
    origin=$("$python" -c '
import importlib.util, os, sys
spec = importlib.util.find_spec(sys.argv[1])
if spec is None or spec.origin is None:
    sys.exit("error: the host python3 cannot import " + sys.argv[1])
print(os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin)
' "$module")
    ln -s "$origin" "$site/$(basename "$origin")"
    echo "$module $origin" >>"$out/nix-support/modules"
done
