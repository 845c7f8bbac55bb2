"""On-policy learning from rewards: reward functions by name and rollouts (groups of
sampled completions with their rewards, advantages and log-probabilities)."""
