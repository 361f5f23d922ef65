"""DVC pipeline stages; DVC runs each as ``python -m stages.<name>`` (dvc.yaml)."""

from dogs_vs_cats.tf_env import quiet_cpu_start

quiet_cpu_start()  # before any stage imports TensorFlow
