"""Run README.md's quick start as a user would, in the current folder:

    python readme_quickstart.py README.md [SOURCE_PACKAGE]

It writes the images the quick start names (images/<class>/, new_class/, bolt/, photo.jpg: Fashion-MNIST from
Debian's dataset-fashion-mnist), runs the shell block marked `<!-- quickstart:sh -->` line by line with
bash, then the Python block marked `<!-- quickstart:python -->`. With SOURCE_PACKAGE (the checkout's
edgecl/), it first checks that every module of the source tree imports from the installed package, not
from the checkout. Exit status 0 when every step succeeded."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path


def block(readme: str, marker: str) -> str:
    found = re.search(rf"<!-- quickstart:{marker} -->\s*```\w*\n(.*?)```", readme, re.S)
    if not found:
        raise SystemExit(f"README.md has no block marked <!-- quickstart:{marker} -->")
    return found.group(1)


def check_installed_modules(source: Path) -> None:
    import edgecl

    installed = Path(edgecl.__file__).resolve().parent
    if installed == source.resolve():
        raise SystemExit(f"edgecl is imported from the checkout ({installed}), not from the installed wheel")
    names = sorted(
        ".".join(("edgecl", *p.relative_to(source).with_suffix("").parts)).removesuffix(".__init__")
        for p in source.rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__main__.py"
    )
    for name in names:
        importlib.import_module(name)
    print(f"all {len(names)} modules of the source tree import from {installed}")


def write_images() -> None:
    from edgecl.eval import fashion_mnist

    fashion_mnist.write_image_folders(Path("images"), "train", 8, [0, 1, 8], seed=0)
    written = fashion_mnist.write_image_folders(Path("new"), "train", 8, [7], seed=1)
    Path("new").joinpath("Sneaker").rename("new_class")
    Path("new").rmdir()
    fashion_mnist.write_image_folders(Path("more"), "train", 8, [5], seed=1)
    Path("more").joinpath("Sandal").rename("bolt")
    Path("more").rmdir()
    from PIL import Image

    test = fashion_mnist.write_image_folders(Path("test"), "test", 1, [8], seed=2)
    Image.open(test["Bag"][0]).convert("RGB").save("photo.jpg")
    assert written


def main() -> None:
    readme = Path(sys.argv[1]).read_text()
    if len(sys.argv) > 2:
        check_installed_modules(Path(sys.argv[2]))
    write_images()
    for line in block(readme, "sh").splitlines():
        command = line.split("  #")[0].strip()
        if command:
            print(f"$ {command}", flush=True)
            subprocess.run(["bash", "-c", command], check=True)
    code = block(readme, "python")
    print("$ python <<README's Python quick start>>", flush=True)
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
