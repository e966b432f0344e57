import sys

from sbmoe.commands import main

sys.exit(main())
