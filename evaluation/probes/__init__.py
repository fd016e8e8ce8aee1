"""Probes: one-off measurements that answered a question once and are kept to answer it again. Not part of the
product: left out of the wheel (setup.cfg, `[options.packages.find]` exclude), run from a checkout
(`python -m evaluation.probes.<name>`). Each module opens with the question it answers, its answer and the doc it
feeds (docs/house.md, "Probes")."""
