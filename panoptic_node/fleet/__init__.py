"""`panoptic-node fleet`: replay and score many recorded bags on Ray, merged exactly into one score.

bags.py finds the bags, worker.py scores one bag in a Ray actor that loads the model once, results.py
keeps each bag's result (written atomically, keyed by model, weights and settings, so a rerun skips what
is done), report.py merges them into the fleet's report and compares it with a baseline, run.py drives it.
"""
