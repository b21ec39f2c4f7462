"""Allow ``python -m scenecls``."""

from scenecls.cli import main

if __name__ == "__main__":
    main()
