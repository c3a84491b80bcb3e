import sys

from glandseg.cli import main

sys.exit(main())
