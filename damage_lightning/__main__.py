"""``python -m damage_lightning``: the command line."""

from damage_lightning.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
