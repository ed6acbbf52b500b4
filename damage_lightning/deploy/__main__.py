"""``python -m damage_lightning.deploy``: see :mod:`damage_lightning.deploy.cli`."""

import sys

from damage_lightning.deploy.cli import main

sys.exit(main())
