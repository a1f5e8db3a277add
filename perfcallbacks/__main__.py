"""``python -m perfcallbacks ...`` is the ``perfhints`` command."""

from perfcallbacks.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
