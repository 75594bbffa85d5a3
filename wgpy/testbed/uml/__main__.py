"""``python -m wgpy.testbed.uml [--check]``: build (or find) the kernel-uml guest's images."""

import sys

from wgpy.testbed.uml.build import main

sys.exit(main())
