"""Install the Kaggle image's packages (kaggle-image.txt) into the venv running this, for the CPU.

`make kaggle-image` runs it with the new venv's python. torch and torchvision come from the index
at the image's versions, without their CUDA dependencies (4 GB to download): of those, only the
CUDA runtime (it tells torch there is no GPU) and CUPTI (torch's CPU library calls it) are
installed. The other CUDA libraries torch links, loaded but never called on a CPU, become one stub
library whose functions abort, saying so, if ever called. Two parts of torch's own libraries
that a CPU run never reads are cut out: the GPU code and the static symbol tables (debuggers'; the
loader reads the dynamic ones). They become holes: the files keep their size and layout, their
disk blocks are freed. Then torch and torchvision must import and compute on the CPU, or the build
fails; that check writes the bytecode of what it imports (pip writes none: a third of the size).
"""

import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

WITHOUT_DEPS = ("torch", "torchvision")  # installed without their CUDA libraries
CUDA = re.compile(r"nvidia-|triton$|cuda-")  # the names of torch's CUDA requirements
KEPT = ("nvidia-cuda-runtime-cu12", "nvidia-cuda-cupti-cu12")  # libtorch_cpu.so calls them
DRIVER = "libcuda.so.1"  # absent on a CPU machine, so the CUDA runtime finds no GPU: no stub
STUB = "libcuda_stub.so"
CUT = (".nv_fatbin", ".symtab", ".strtab")  # the GPU code, the static symbol table
LOOSE = "cuda_stub"  # the stub's version node of the symbols wanted without a version
CHECK = """
import torch, torchvision
assert not torch.cuda.is_available()
torch.nn.Conv2d(3, 4, 3)(torch.rand(1, 3, 8, 8))
torchvision.ops.nms(torch.tensor([[0.0, 0, 4, 4], [1, 1, 4, 4]]), torch.rand(2), 0.5)
print(f"kaggle-image: torch {torch.__version__}, torchvision {torchvision.__version__}, CPU")
"""


def name(requirement: str) -> str:
    """A requirement's normalized project name."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def listed(path: Path) -> list[str]:
    """The requirements of a requirements file, comments dropped."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def dependencies(project: str) -> list[str]:
    """An installed project's requirements, less extras, WITHOUT_DEPS and CUDA but KEPT."""
    needed = []
    for requirement in metadata.requires(project) or []:
        dep = name(requirement)
        cuda = CUDA.match(dep) and dep not in KEPT
        if "extra ==" not in requirement and dep not in WITHOUT_DEPS and not cuda:
            needed.append(requirement)  # with its marker, which pip evaluates
    return needed


def pip_install(*args: str) -> None:
    """pip install, quiet, without bytecode or warnings about torch's CUDA requirements (left
    out on purpose); one line if it fails."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*command, "--no-compile", "--no-warn-conflicts", *args])
    if done.returncode:
        raise SystemExit(f"kaggle-image: pip failed (exit {done.returncode}), see above")


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def linked(path: Path) -> tuple[set[str], set[str]]:
    """The libraries path needs that the loader lacks (sonames), and the paths of those it finds."""
    text = run("ldd", str(path))
    lacked = set(re.findall(r"^\s*(\S+) => not found", text, re.M))
    return lacked, set(re.findall(r"=> (/\S+)", text))


def exported(path: Path) -> set[str]:
    """The names of the dynamic symbols path defines."""
    lines = run("nm", "-D", "--defined-only", str(path)).splitlines()
    return {line.split()[-1].split("@")[0] for line in lines if line.strip()}


def wanted(path: Path, missing: set[str], known: set[str]) -> dict[str, set[str]]:
    """The symbols path takes from missing libraries, by version node: a versioned symbol by its
    version (named after its library), an unversioned one not in known under LOOSE."""
    nodes: dict[str, set[str]] = {LOOSE: set()}
    file = None
    for line in run("readelf", "-V", "-W", str(path)).splitlines():  # the versions it needs
        if needed_file := re.search(r"File: (\S+)", line):
            file = needed_file.group(1)
        elif (version := re.search(r"Name: (\S+)", line)) and file in missing:
            nodes[version.group(1)] = set()
    for line in run("nm", "-D", "--undefined-only", str(path)).splitlines():
        kind, symbol = line.split()[-2:]
        symbol, _, version = symbol.partition("@")
        if kind == "U" and version in nodes:
            nodes[version].add(symbol)
        elif kind == "U" and not version and symbol not in known:
            nodes[LOOSE].add(symbol)
    return nodes


def stub_missing_libraries(lib: Path) -> list[str]:
    """Compile one stub defining every symbol that torch's libraries (in lib) take from the
    libraries they need and lack, the driver aside; link those names to it; return them."""
    elves = [p for p in lib.glob("*.so*") if not p.is_symlink()] + list(lib.parent.glob("_C*.so"))
    missing, found = linked(Path(sys.executable).resolve())  # libpython: the Py* symbols
    for path in elves:
        lacked, paths = linked(path)
        missing, found = missing | lacked, found | paths
    missing.discard(DRIVER)
    if not missing:
        return []
    known = set().union(*(exported(Path(p)) for p in found | set(elves)))
    nodes: dict[str, set[str]] = {}
    for path in elves:
        for node, symbols in wanted(path, missing, known).items():
            nodes.setdefault(node, set()).update(symbols)
    symbols = [s for node in nodes.values() for s in node]
    if len(symbols) != len(set(symbols)):
        raise SystemExit("kaggle-image: a symbol wanted in two versions, which one stub lacks")
    source = "#include <stdio.h>\n#include <stdlib.h>\nstatic void stub(const char *name) {\n"
    source += '  fprintf(stderr, "%s: a CUDA stub (the CPU-only Kaggle image venv)\\n", name);\n'
    source += "  abort();\n}\n" + "".join(f'void {s}(void) {{ stub("{s}"); }}\n' for s in symbols)
    script = "".join(
        f"{node} {{ {''.join(f'{s}; ' for s in sorted(names))}}};\n"
        for node, names in sorted(nodes.items())
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stub.c").write_text(source)
        (Path(tmp) / "stub.map").write_text(script)
        command = ["cc", "-shared", "-fPIC", "-o", str(lib / STUB), f"-Wl,-soname,{STUB}"]
        run(*command, f"-Wl,--version-script={tmp}/stub.map", f"{tmp}/stub.c")
    for soname in missing:
        (lib / soname).symlink_to(STUB)
    return sorted(missing)


def cut_sections(lib: Path) -> int:
    """Punch the CUT sections out of lib's libraries; return the bytes freed."""
    freed = 0
    header = re.compile(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+\S+\s+(\S+)\s+(\S+)")  # name, offset, size
    for path in (p for p in lib.glob("*.so*") if not p.is_symlink()):
        for line in run("readelf", "-S", "-W", str(path)).splitlines():
            if (section := header.match(line)) and section.group(1) in CUT:
                offset, size = (str(int(x, 16)) for x in section.groups()[1:])
                run("fallocate", "--punch-hole", "--offset", offset, "--length", size, str(path))
                freed += int(size)
    return freed


def main(listing: Path) -> None:
    start = time.monotonic()
    requirements = listed(listing)
    pip_install("--no-deps", *(r for r in requirements if name(r) in WITHOUT_DEPS))
    rest = [r for r in requirements if name(r) not in WITHOUT_DEPS]
    pip_install(*rest, *(r for project in WITHOUT_DEPS for r in dependencies(project)))
    lib = Path(sysconfig.get_paths()["platlib"]) / "torch" / "lib"
    stubbed, freed = stub_missing_libraries(lib), cut_sections(lib)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", CHECK], env=env, check=True)
    print(
        f"kaggle-image: {len(stubbed)} CUDA libraries stubbed, {freed / 2**30:.1f} GiB of torch's"
        f" libraries cut; built in {time.monotonic() - start:.0f} s"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
