"""``python -m ltcutils.workbook`` is the ``ltc`` command."""

import sys

from .cli import main

sys.exit(main())
