import sys

from sbmoe.cli import main

sys.exit(main())
