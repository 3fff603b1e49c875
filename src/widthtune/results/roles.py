"""What a stored trial was for: the `role` column of the trial table and the `widthtune.role` MLflow tag."""

# an ordinary trial of a sweep or compare
TRIAL = "trial"
# a transfer study's trial on a proxy, its transferred trial on the target, and its two baselines on the target:
# each method optimised directly there, and the one-multiplier (uniform) model at the same cost
PROXY = "proxy"
TARGET = "target"
DIRECT = "direct"
BASELINE = "baseline"
# the training run of a shared artifact (a teacher, a pretrained baseline) that other trials use
ARTIFACT = "artifact"

# roles whose trials are not compared with the experiment's methods on the target
NOT_COMPARED = (PROXY, TARGET, ARTIFACT)
