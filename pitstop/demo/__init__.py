"""`pitstop demo`: the simulated world (world.py), the scenario that runs it against a stack (scenario.py) and
plays its two acts (acts.py), the model server that serves it through the serving router (server.py), and the
console that shows what happens (console.py)."""

from pitstop.demo.scenario import run

__all__ = ["run"]
