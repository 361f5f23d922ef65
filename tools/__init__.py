"""Tools people run by hand (python -m tools.<name>): predict, report, bench, anatomy, scenarios, compare."""

from dogs_vs_cats.startup import start_program

if start_program():  # python -m tools.<name>, before the program's imports; any other import does nothing
    from dogs_vs_cats.tf_env import quiet_cpu_start

    quiet_cpu_start()
