"""`python -m kandi ...`: the same as the `kandi` command."""

from kandi.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
