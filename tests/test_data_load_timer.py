import time

from ignite.engine import Engine

from scripts.handlers import DataLoadTimer


def _slow_batches(n, delay):
    for i in range(n):
        time.sleep(delay)
        yield i


def test_data_load_timer_reports_the_waiting_fraction():
    fast, fast_timer = Engine(lambda e, batch: time.sleep(0.01)), DataLoadTimer()
    fast_timer.attach(fast)
    fast.run([0] * 5, max_epochs=1)  # data ready at once: almost no waiting
    assert fast_timer.fraction < 0.3
    slow, slow_timer = Engine(lambda e, batch: time.sleep(0.01)), DataLoadTimer()
    slow_timer.attach(slow)
    slow.run(_slow_batches(5, 0.05), epoch_length=5, max_epochs=1)  # loader 5x slower than the step
    assert slow_timer.fraction > 0.6
