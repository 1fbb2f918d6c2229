"""`python -m wrenn.images build [--template minimal|python] [--data-dir DIR] [--force]`."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from ._build import DEFAULT_DISK_SIZE, build
from ._image import DEFAULT_DATA_DIR, find
from ._steps import BuildError
from ._templates import TEMPLATES

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """'2G', '1536M', '2147483648' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.I)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2G or 1536M)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrenn.images", description="Build Wrenn guest images.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or confirm up to date) the image of a template")
    s = sub.add_parser("show", help="print the current image of a template")
    lock = sub.add_parser("lock", help="resolve a recipe's requirements.in into its requirements.lock")
    lock.add_argument("--template", default="code-interpreter", choices=sorted(TEMPLATES))
    for p in (b, s):
        p.add_argument("--template", default="minimal", choices=sorted(TEMPLATES))
        p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default {DEFAULT_DATA_DIR}")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date, ignoring caches")
    b.add_argument(
        "--disk-size",
        type=parse_size,
        default=None,
        help=f"root disk size (the template's, else {DEFAULT_DISK_SIZE >> 30}G)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress display")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    out = Console()
    if args.command == "lock":
        from . import _rootfs, _templates

        recipe = _templates.get(args.template)
        text = _rootfs.lock_requirements(recipe)
        target = _rootfs.recipe_path(recipe)
        assert target is not None
        (target / "requirements.lock").write_text(text)
        console.print(f"wrote {target / 'requirements.lock'} ({text.count('==')} packages)")
        return 0
    if args.command == "show":
        image = find(args.template, args.data_dir)
        if image is None:
            console.print(f"no image of {args.template} under {args.data_dir}")
            return 1
        out.print_json(image.manifest_path.read_text())
        return 0
    try:
        image = build(
            args.template,
            args.data_dir,
            force=args.force,
            progress=not args.no_progress,
            disk_size=args.disk_size,
            console=console,
        )
    except BuildError as exc:
        console.print(f"[red]image build failed at step {exc.step!r}[/]: {exc.message}")
        console.print(f"full log: {exc.log_path}")
        return 1
    for key in ("vmlinuz", "vmlinux", "initrd", "rootfs"):
        out.print(f"{key:8} {getattr(image, key)}", highlight=False)
    about = f"{image.version} ({image.template}, kernel {image.kernel_version})"
    out.print(f"{'version':8} {about}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
