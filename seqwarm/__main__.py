import sys

if __name__ == "__main__":  # not when a spawned worker process re-imports this as `__mp_main__`
    from seqwarm.cli import main

    sys.exit(main())
