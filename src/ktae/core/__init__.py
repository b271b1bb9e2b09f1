"""Estimator core: configuration, rollout-level advantages, Fisher tables, KTAE."""
