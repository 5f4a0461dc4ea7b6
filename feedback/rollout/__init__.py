"""Rollout: a candidate's shadow (scored beside the champion, judged by the pure gate in shadow_gate.py), the ramp
controller and its statistics (rules.py, sequential.py: pure), urgency, the drill, and the tick that runs them."""
