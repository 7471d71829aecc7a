"""Training: whole-batch data serving, schedules, checkpoints and the loop."""
