"""The benchmarks' clock: this process's CPU time when one thread runs on the CPU, else wall time.

With one thread on a CPU, another job on a shared machine then slows neither contender by taking
the core away (it still costs both some cache); a GPU's work is not this process's CPU time, so
there, and with several threads, the clock is the wall clock.

    from clock import clock
    clock.choose(device, threads)   # -> "process CPU time" or "wall time"
    t = clock(); ...; seconds = clock() - t
"""
from __future__ import annotations

import time

import torch


class Clock:
    def __init__(self):
        self.now, self.name = time.perf_counter, "wall time"

    def choose(self, device, threads: int) -> str:
        """CPU time for one thread on the CPU, else wall time; returns the clock's name."""
        if torch.device(device).type == "cpu" and threads == 1:
            self.now, self.name = time.process_time, "process CPU time"
        else:
            self.now, self.name = time.perf_counter, "wall time"
        return self.name

    def __call__(self) -> float:
        return self.now()


clock = Clock()
