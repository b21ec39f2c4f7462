"""Running training: run folders, phases and checkpoints, progress callbacks."""
