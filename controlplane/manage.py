"""`controlplane-manage`: manage.py for an installed wheel, where there is no source tree.

`controlplane-manage migrate`, `controlplane-manage standalone`, `controlplane-manage check
--deploy`: the same commands as `python manage.py …` in a checkout (whose manage.py stays).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
