"""The ground floor: errors, registries, config dataclass helpers, atomic IO and locks, seeding, distributed.

Nothing here imports any other part of vlprompt (tests/test_layering.py holds that)."""
