"""``python -m deepfactor``: the command line (see :mod:`deepfactor.cli`)."""

import sys

from deepfactor.cli import main

sys.exit(main())
