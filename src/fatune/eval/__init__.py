"""Evaluation: held-out loss, Persian fidelity, FarsTail and multiple-choice scoring, comparison reports."""
