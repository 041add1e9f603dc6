#!/usr/bin/env python3
"""Prints an apt source for SUITE-backports, derived from the machine's own sources.

The project names no mirror: the backports line uses the URI (and keyring) of the
source the machine already takes SUITE from, in deb822 (`*.sources`) or one-line
(`sources.list`) form. Exits 1 when no such source exists.
"""

import glob
import sys


def deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for raw in text.splitlines() + [""]:
        if raw.lstrip().startswith("#"):
            continue
        line = raw.rstrip()
        if not line.strip():
            if current:
                stanzas.append(current)
                current = {}
            continue
        if ":" in line and not line[0].isspace():
            key, value = line.split(":", 1)
            current[key.strip().lower()] = value.strip()
    return stanzas


def main() -> int:
    suite = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
    # A second argument: another root to read etc/apt from (the tests use one).
    etc = (sys.argv[2] if len(sys.argv) > 2 else "") + "/etc/apt"
    for path in sorted(glob.glob(f"{etc}/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as f:
            for stanza in deb822_stanzas(f.read()):
                if "deb" not in stanza.get("types", "").split():
                    continue
                if stanza.get("enabled", "yes").lower() == "no":
                    continue
                if suite not in stanza.get("suites", "").split():
                    continue
                uri = stanza["uris"].split()[0]
                print("Types: deb")
                print(f"URIs: {uri}")
                print(f"Suites: {suite}-backports")
                print(f"Components: {stanza.get('components', 'main')}")
                if "signed-by" in stanza:
                    print(f"Signed-By: {stanza['signed-by']}")
                return 0
    for path in [f"{etc}/sources.list", *sorted(glob.glob(f"{etc}/sources.list.d/*.list"))]:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) < 4 or words[0] != "deb":
                continue
            options = []
            rest = words[1:]
            if rest[0].startswith("["):
                while rest and not rest[0].endswith("]"):
                    options.append(rest.pop(0))
                options.append(rest.pop(0))
            if len(rest) >= 3 and rest[1] == suite:
                words_in_brackets = " ".join(options).strip("[]").split()
                signed = [o for o in words_in_brackets if o.startswith("signed-by=")]
                print("Types: deb")
                print(f"URIs: {rest[0]}")
                print(f"Suites: {suite}-backports")
                print("Components: main")
                if signed:
                    print(f"Signed-By: {signed[0].split('=', 1)[1]}")
                return 0
    print(f"error: no apt source for {suite} in {etc}; add one, then rerun", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
