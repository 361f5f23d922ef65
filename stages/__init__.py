"""DVC pipeline stages; DVC runs each as ``python -m stages.<name>`` (dvc.yaml)."""
