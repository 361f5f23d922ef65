"""How this project's programs run, apart from the study they run: the error a user can fix, start and end on
signals, outputs written atomically and checked before work, progress lines, TensorFlow's log.

Only the standard library and tqdm are imported here, never the study (``dogs_vs_cats``), so an entry point can
ask for its start-up before TensorFlow's imports, which take seconds."""
