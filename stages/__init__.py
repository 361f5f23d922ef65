"""DVC pipeline stages; DVC runs each as ``python -m stages.<name>`` (dvc.yaml)."""

from dogs_vs_cats.startup import start_program

if start_program():  # python -m stages.<name>, before the program's imports; any other import does nothing
    from dogs_vs_cats.tf_env import quiet_cpu_start

    quiet_cpu_start()
