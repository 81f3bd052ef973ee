"""Strip the symbol tables of a virtualenv's shared libraries, keeping any library that stripping
would break (run in the coordinator image's build stage).

`strip --strip-unneeded` keeps the dynamic symbols a library is loaded and linked by, and drops
what only debuggers and profilers read (what Debian does to its own packages): 195 MB of
TensorFlow's and JAX's libraries alone. But wheels repaired by auditwheel were edited with
patchelf, and binutils' strip can then write LOAD segments whose file offset and address disagree
modulo the page size, which the dynamic loader refuses ("ELF load command address/offset not
page-aligned"). Each stripped copy is checked for exactly that and the original kept if it fails.

    python strip_libraries.py SITE_PACKAGES
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PAGE = 4096


def loadable(path: Path) -> bool:
    """Whether every LOAD segment's offset and address agree modulo the page size."""
    result = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        return False
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"]:
            offset, address = int(fields[1], 16), int(fields[2], 16)
            if (offset - address) % PAGE:
                return False
    return True


def main(site: Path) -> int:
    saved = kept = 0
    for path in sorted(p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink()):
        if not loadable(path):
            continue  # not an ELF library we can judge: leave it
        stripped = path.with_name(path.name + ".stripped")
        if subprocess.run(["strip", "--strip-unneeded", "-o", str(stripped), str(path)],
                          capture_output=True).returncode != 0:
            stripped.unlink(missing_ok=True)
            continue
        if loadable(stripped):
            saved += path.stat().st_size - stripped.stat().st_size
            shutil.copymode(path, stripped)
            stripped.replace(path)
        else:
            kept += 1
            stripped.unlink()
    print(f"stripped {saved / 2**20:.0f} MB of symbol tables; kept {kept} libraries that stripping would break")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
