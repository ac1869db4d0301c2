"""core: the vocabulary every part of alarmgw shares, below agent/, drivers/ and simulator/.

errors.py  one root AlarmgwError and the typed errors (config, field, buffer, uplink)
events.py  Event, Reading, Identity and their enums (Kind, Category, Severity, Lane),
           now_ms(), and the exact payload bytes the feed carries
checks.py  the checking kit of every TOML file a person writes (config, profiles,
           scenarios): one reader, one dialect of problems, declarations of tables

It must never import agent/, drivers/ or simulator/ (tests/test_layering.py holds it):
data flows one way, and the words for it sit underneath.
"""
