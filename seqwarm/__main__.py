import sys

from seqwarm.cli import main

sys.exit(main())
