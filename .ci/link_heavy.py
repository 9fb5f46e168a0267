"""Hard-link the heavy binary distributions (torch, triton, the CUDA libraries: about 5 GB) of this venv into
another venv's site-packages, so the wheel smoke does not unpack them a second time on a CI disk. pip still
checks their versions against the wheel's requirements and installs everything else itself."""

import os
import re
import shutil
import sys
from importlib.metadata import distributions
from pathlib import Path

HEAVY = re.compile(r"^(torch|triton|nvidia[-_].*|cuda[-_].*)$", re.IGNORECASE)


def main(target: str) -> None:
    if not Path(target).is_dir() or Path(target).name != "site-packages":
        sys.exit(f"link_heavy: {target!r} is not a site-packages folder")
    linked = copied = 0
    for dist in distributions():
        if not HEAVY.match(dist.metadata["Name"] or "") or not dist.files:
            continue
        for file in dist.files:
            if file.parts[0] == "..":
                continue  # console scripts and headers outside site-packages
            src, dst = Path(file.locate()), Path(target) / file
            if not src.is_file() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
                linked += 1
            except OSError:  # another file system: a copy, which costs the disk this was meant to spare
                shutil.copy2(src, dst)
                copied += 1
    print(f"torch, triton and the CUDA libraries into {target}: {linked} files linked, {copied} copied")


if __name__ == "__main__":
    main(sys.argv[1])
