"""Tools people run by hand (python -m tools.<name>): predict, report, bench, anatomy, scenarios."""

from dogs_vs_cats.tf_env import quiet_cpu_start

quiet_cpu_start()  # before any tool imports TensorFlow
