"""`python -m llmos.specs render [PATH]` writes the syscall reference rendered from the table."""

import sys
from pathlib import Path

from .abi import render_markdown

if __name__ == "__main__":
    if sys.argv[1:2] != ["render"]:
        sys.exit("usage: python -m llmos.specs render [PATH]")
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("syscalls.md")
    target.write_text(render_markdown())
    print(f"wrote {target}")
