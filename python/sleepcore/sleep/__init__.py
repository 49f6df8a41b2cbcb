"""The sleep cycle: Knowledge Seeding (distillation and the Learning-to-Imitate reward) and
Dreaming. Submodules are imported on use, e.g. :mod:`sleepcore.sleep.rewards`."""
