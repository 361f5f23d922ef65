"""DVC pipeline stages; DVC runs each as ``python -m stages.<name>`` (dvc.yaml)."""

from dogs_vs_cats.startup import start_program

start_program()  # under python -m stages.<name> only, before the program's imports; any other import does nothing
