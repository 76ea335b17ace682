"""The ``clusterchat`` console command: Django's manage.py with this project's settings, so an
installed wheel runs ``clusterchat runnode``, ``clusterchat migrate``, ``clusterchat
collectstatic`` with no checkout around it."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.core.management import execute_from_command_line

    args = list(sys.argv if argv is None else argv)
    # Django's help text shows argv[0]: "clusterchat", not a path into the virtualenv's bin/.
    args[0] = "clusterchat"
    execute_from_command_line(args)


if __name__ == "__main__":
    main()
