"""Hydra config of ``python -m ktae.integrations.verl`` (verl's ppo_trainer plus ``algorithm.ktae``)."""
