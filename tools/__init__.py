"""Tools people run by hand (python -m tools.<name>): predict, report, bench, anatomy, scenarios, compare."""

from dogs_vs_cats.startup import start_program

start_program()  # under python -m tools.<name> only, before the program's imports; any other import does nothing
