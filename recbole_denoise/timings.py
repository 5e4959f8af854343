"""Wall seconds per named stage of a run: the ``timings`` of its result (README "Running").

A :class:`Timings` is a plain ``dict`` (name -> seconds; JSON and pickles as one) that also times a block:
``with timings.stage("train"): ...`` stores the block's wall time under ``"train"`` when the block
finishes; a block that raises records nothing, as the run it belongs to has no result. :meth:`carry` adds
the seconds a stage spent in earlier processes (a resumed run) to that stage and to :meth:`total`.
"""
import contextlib
import time


class Timings(dict):
    """``{stage: seconds}``; :meth:`stage` times one block, :meth:`total` the time since this was made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = time.time()
        self.carried = 0.0  # seconds spent in earlier processes, added by carry()

    @contextlib.contextmanager
    def stage(self, name):
        start = time.time()
        yield
        self[name] = time.time() - start

    def carry(self, name, seconds):
        """Add ``seconds`` that stage ``name`` spent in earlier processes to it and to :meth:`total`."""
        self[name] = self.get(name, 0.0) + seconds
        self.carried += seconds

    def total(self):
        """Seconds since this was made (a run makes it first thing, so this is the run's wall time), plus
        what :meth:`carry` added."""
        return time.time() - self.start + self.carried
