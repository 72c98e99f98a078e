import sys

from atoll.cli.main import main

sys.exit(main())
