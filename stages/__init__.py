"""DVC pipeline stages for the Dogs vs. Cats study; run each as ``python -m stages.<name>``."""
