# The stand-in's `$stdenv/setup`, sourced by every stdenv.mkDerivation builder (and by
# runInLinuxVM on the host and again in the guest), as nixpkgs' stdenv/generic/setup.sh:
# PATH from the inputs and the initial path, hooks, and genericBuild running either
# `buildCommand` or the phases.

: "${outputs:=out}"
export NIX_BUILD_CORES="${NIX_BUILD_CORES:-1}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
export SHELL=@shell@

# Inputs first, then the initial path (coreutils, grep, ...), as nixpkgs orders them.
PATH=
for __input in ${nativeBuildInputs:-} ${buildInputs:-} ${propagatedBuildInputs:-} \
    ${nativeCheckInputs:-} ${nativeInstallCheckInputs:-} @initialPath@; do
    if [ -d "$__input/bin" ]; then
        PATH="${PATH:+$PATH:}$__input/bin"
    fi
done
unset __input
export PATH

# A hook is either a shell function of that name or a variable holding shell code.
runHook() {
    local hookName="$1"
    shift
    if declare -F "$hookName" >/dev/null; then
        "$hookName" "$@"
    elif [ -n "${!hookName:-}" ]; then
        eval "${!hookName}"
    fi
}

unpackPhase() {
    runHook preUnpack
    # Sources are store paths; the build works on a writable copy named "source".
    cp -r --no-preserve=ownership -- "$src" source
    chmod -R u+w source
    sourceRoot=source
    runHook postUnpack
}
patchPhase() { runHook prePatch; runHook postPatch; }
configurePhase() { runHook preConfigure; runHook postConfigure; }
buildPhase() { runHook preBuild; runHook postBuild; }
checkPhase() { runHook preCheck; runHook postCheck; }
installPhase() { runHook preInstall; runHook postInstall; }
fixupPhase() { runHook preFixup; runHook postFixup; }
installCheckPhase() { runHook preInstallCheck; runHook postInstallCheck; }

genericBuild() {
    if [ -n "${buildCommandPath:-}" ] && [ -f "$buildCommandPath" ]; then
        source "$buildCommandPath"
        return
    fi
    if [ -n "${buildCommand:-}" ]; then
        eval "$buildCommand"
        return
    fi
    local phase
    for phase in ${phases:-unpackPhase patchPhase configurePhase buildPhase checkPhase installPhase fixupPhase installCheckPhase}; do
        case "$phase" in
            checkPhase) [ -n "${doCheck:-}" ] || continue ;;
            installCheckPhase) [ -n "${doInstallCheck:-}" ] || continue ;;
        esac
        echo "Running phase: $phase"
        if [ -n "${!phase:-}" ]; then
            eval "${!phase}"
        else
            "$phase"
        fi
        if [ "$phase" = unpackPhase ]; then
            cd "${sourceRoot:-.}"
        fi
    done
}
