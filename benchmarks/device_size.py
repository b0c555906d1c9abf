"""Size of what travels to the GPU machine for the device check, refused over the limit.

    python benchmarks/device_size.py [--repo .] [--limit-mib 64] [CARRIED ...]

What travels is the working tree as git sees it (tracked files and untracked files that are not ignored), a
``shared/`` folder inside the checkout, and the carried ignored paths (``.whl``, ``.device``). Sizes are
apparent sizes (``lstat``): a sparse file travels at its full length, a symbolic link as a link. Outside a git
work tree every file under the folder counts. Exits 1, naming the largest part, when the total is over the limit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

LIMIT_MIB = 64.0
TREE = "tree (tracked + untracked, not ignored)"
MIB = 1024 * 1024


def walk_files(root: Path) -> Iterator[Path]:
    """Every file and symbolic link under ``root`` (``root`` itself if it is one); links are not followed."""
    if root.is_symlink() or root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            yield Path(folder) / name


def tree_files(repo: Path) -> set[Path]:
    """Tracked and untracked-not-ignored files of ``repo``; every file under it when it is not a git work tree."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set(walk_files(repo))
    return {repo / name for name in listing.decode("utf-8", "surrogateescape").split("\0") if name}


def size_of(paths: Iterable[Path]) -> int:
    """Summed apparent size; a listed file that no longer exists (deleted, not yet committed) counts nothing."""
    total = 0
    for path in paths:
        try:
            total += path.lstat().st_size
        except FileNotFoundError:
            pass
    return total


def travel_sizes(repo: Path, carried: Iterable[str]) -> dict[str, int]:
    """Bytes per part of what travels: the git tree, each carried path, and ``shared/`` if the checkout has one (a
    file is counted once, in the first part that holds it: a carried path first)."""
    seen: set[Path] = set()
    parts: dict[str, int] = {}
    for name in list(carried) + (["shared"] if (repo / "shared").exists() else []):
        files = set(walk_files(repo / name)) - seen if (repo / name).exists() else set()
        seen |= files
        parts[name] = size_of(files)
    return {TREE: size_of(tree_files(repo) - seen), **parts}


def check(repo: Path, carried: Iterable[str], limit_mib: float = LIMIT_MIB) -> tuple[int, list[str]]:
    """Total bytes and report lines; the last line says whether the total fits under ``limit_mib``."""
    parts = travel_sizes(repo, carried)
    total = sum(parts.values())
    lines = [f"{name}: {size / MIB:.2f} MiB" + ("" if name == TREE or (repo / name).exists() else " (absent)")
             for name, size in parts.items()]
    verdict = "fits" if total <= limit_mib * MIB else "is OVER"
    lines.append(f"total travelling from {repo}: {total / MIB:.2f} MiB, which {verdict} the limit of {limit_mib:g} MiB")
    if total > limit_mib * MIB:
        largest = max(parts, key=parts.__getitem__)
        lines.append(f"error: the largest part is {largest} ({parts[largest] / MIB:.2f} MiB); carry or keep less")
    return total, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("carried", nargs="*", help="ignored paths (relative to --repo) that travel too, e.g. .whl .device")
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = parser.parse_args(argv)
    total, lines = check(args.repo.resolve(), args.carried, args.limit_mib)
    print("\n".join(lines))
    return 0 if total <= args.limit_mib * MIB else 1


if __name__ == "__main__":
    sys.exit(main())
