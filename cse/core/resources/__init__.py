"""One module per resource type: its attribute policy and its rules, in one home.

Each module declares `SPEC`, a `ResourceSpec` whose `rules` (a `TypeRules`) hold what the type
does beyond storing attributes: who it belongs to when created, the CSE-set attributes, what
happens to its parent when a child comes or goes. The operations in `cse/core` call these
hooks and apply the changes they return; `cse/core/registry.py` lists the modules.
"""
