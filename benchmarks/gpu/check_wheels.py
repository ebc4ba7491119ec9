"""Check a folder of wheels against itself and the GPU image: one version per package, and every requirement of
every wheel (no extras, markers evaluated for CPython 3.12 on x86-64 Linux) met by a carried wheel of a matching
version or by a package the image has (image_packages.txt: its version where known, else any version counts).

    python benchmarks/gpu/check_wheels.py .whl
"""

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def wheel_metadata(path: Path):
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode("utf-8"))


def image_packages() -> dict[str, Version | None]:
    """The image's packages: name -> version where known, else None."""
    packages = {}
    for line in (HERE / "image_packages.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = Version(version) if version else None
    return packages


def problems(folder: Path) -> list[str]:
    carried, found = {}, []
    metadata = {path: wheel_metadata(path) for path in sorted(folder.glob("*.whl"))}
    for meta in metadata.values():
        name = canonicalize_name(meta["Name"])
        if name in carried:
            found.append(f"{name}: two versions carried ({carried[name]} and {meta['Version']})")
        carried[name] = Version(meta["Version"])
    image = image_packages()
    for path, meta in metadata.items():
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
                continue
            name = canonicalize_name(requirement.name)
            if name in carried:
                if not requirement.specifier.contains(carried[name], prereleases=True):
                    found.append(f"{path.name} needs {requirement}, carried {carried[name]}")
            elif name not in image:
                found.append(f"{path.name} needs {requirement}: neither carried nor on the image")
            elif image[name] is not None and not requirement.specifier.contains(image[name], prereleases=True):
                found.append(f"{path.name} needs {requirement}, the image has {image[name]}")
    return found


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".whl")
    if not any(folder.glob("*.whl")):
        print(f"check_wheels.py: error: no wheels in {folder}", file=sys.stderr)
        return 1
    found = problems(folder)
    for line in found:
        print(f"check_wheels.py: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
