"""Write plots_template/index.html: DVC's plots page with vega, vega-lite and vega-embed
inlined, so that ``dvc plots show`` and ``dvc plots diff`` draw without a network.

    cd "$(mktemp -d)" && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python plots_template/build.py THAT_FOLDER

Each tarball is checked against the registry's integrity digest pinned in
:data:`PACKAGES`, its minified build is inlined in :data:`PACKAGES` order, and its
``LICENSE`` is copied beside the page as ``<name>.LICENSE``. The versions are the ones
DVC's own page loads from a CDN (``dvc_render.vega.VegaRenderer.SCRIPTS``).
plots_template/README.md says more.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "index.html"

# (name, version, file inlined, sha512 integrity of the npm tarball), in load order
PACKAGES = (
    (
        "vega",
        "5.20.2",
        "build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    (
        "vega-lite",
        "5.2.0",
        "build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    (
        "vega-embed",
        "6.18.2",
        "build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)

# What dvc_render fills in; no {scripts}: that is where DVC puts its CDN <script> tags.
HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
"""
TAIL = """    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)
# Text that would end an inline script early, or that dvc_render would replace.
FORBIDDEN = re.compile(r"</script|<!--|\{(?:scripts|plot_divs|refresh_tag)\}", re.IGNORECASE)


def member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball) as archive:
        extracted = archive.extractfile(f"package/{name}")
        if extracted is None:
            raise SystemExit(f"error: {tarball}: no package/{name}")
        return extracted.read()


def build(folder: Path) -> None:
    scripts = []
    for name, version, path, integrity in PACKAGES:
        tarball = folder / f"{name}-{version}.tgz"
        if not tarball.is_file():
            raise SystemExit(f"error: {tarball}: not found (npm pack {name}@{version})")
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if f"sha512-{digest}" != integrity:
            raise SystemExit(f"error: {tarball}: sha512 differs from the registry's {integrity}")
        published = member(tarball, path)
        sha256 = hashlib.sha256(published).hexdigest()  # of the file as published
        # its source map is not shipped: nothing for a browser to look up
        code = SOURCE_MAP.sub("", published.decode("utf-8"))
        if FORBIDDEN.search(code):
            raise SystemExit(f"error: {tarball}: {path} holds text that cannot be inlined")
        banner = f"/* {name}@{version} {path} sha256 {sha256}; LICENSE: {name}.LICENSE */"
        scripts.append(f"    <script>{banner}\n{code.strip()}\n    </script>\n")
        (HERE / f"{name}.LICENSE").write_bytes(member(tarball, "LICENSE"))
    PAGE.write_text(HEAD + "".join(scripts) + TAIL, encoding="utf-8")
    print(f"{PAGE}: {PAGE.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python plots_template/build.py FOLDER_OF_NPM_PACK_TARBALLS")
    build(Path(sys.argv[1]))
