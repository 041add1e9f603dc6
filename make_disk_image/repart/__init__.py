"""nixpkgs' `image.repart` definitions (repart.d(5)) built by this engine.

`types` (GPT partition types), `definitions` (one partition definition, validated),
`uuids` (identities derived from the seed as systemd-repart derives them), `placement`
(sizes and offsets as repart computes them), `build` (the image).
"""
