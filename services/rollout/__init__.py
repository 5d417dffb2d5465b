"""Rollouts and experiments: rollout state and its follower, sticky assignment, traffic routing (shadow, canary, A/B), the prediction log, feedback and the statistics of experiments."""
