"""The names in an experiment folder that more than one layer reads."""

# the experiment's state: config, hash, MLflow ids, study and artifact status (written by the platform)
EXPERIMENT_FILE = "experiment.json"
