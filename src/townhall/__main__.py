"""`python -m townhall` runs the same CLI as the `townhall` console script."""

from __future__ import annotations

from townhall.cli.main import main

if __name__ == "__main__":
    main()
