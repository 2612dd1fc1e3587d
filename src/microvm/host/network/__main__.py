import sys

from .restore import main

sys.exit(main())
