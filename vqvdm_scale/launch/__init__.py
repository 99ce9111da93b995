"""Job submission: submitit/Slurm launchers for every stage."""
