"""``python -m zoo.bench``: see ``zoo.bench``."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
