"""``python -m pcic_ros.cli``: the pcic command."""

import sys

from pcic_ros.cli import main

sys.exit(main())
