"""Step metrics survive a tracking-server outage: buffered, retried, nothing lost within the bound."""

from vap.registry import GuardedMetrics, Registry


class Outage:
    """A client whose log_batch fails while `down` is set, like a dead server."""

    def __init__(self, client):
        self.client, self.down, self.calls = client, True, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def log_batch(self, *args, **kwargs):
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return self.client.log_batch(*args, **kwargs)


def test_outage_buffers_then_flushes_every_step_once(mlflow_server):
    registry = Registry(mlflow_server, "guarded")
    run = registry.start_run("job-guarded", {}, {})
    outage = Outage(registry.client)
    registry._client = outage
    logger = GuardedMetrics(registry, run, max_pending=6, retry_every=0.0)
    for step in range(8):  # server down: nothing raises, the queue keeps the newest 6
        assert logger.log(step, loss=1.0 / (step + 1)) is False
    assert (logger.dropped, [s for s, _, _ in logger.pending]) == (2, [2, 3, 4, 5, 6, 7])
    outage.down = False
    assert logger.log(8, loss=1.0 / 9) is True and logger.pending == [] and logger.dropped == 3  # step 2 went too
    history = sorted((m.step, m.value) for m in outage.client.get_metric_history(run, "loss"))
    assert history == [(s, 1.0 / (s + 1)) for s in range(3, 9)]


def test_retry_waits_between_attempts(mlflow_server):
    registry = Registry(mlflow_server, "guarded")
    run = registry.start_run("job-guarded-wait", {}, {})
    outage = Outage(registry.client)
    registry._client = outage
    logger = GuardedMetrics(registry, run, retry_every=3600)
    for step in range(5):
        logger.log(step, loss=0.5)
    assert outage.calls == 1  # one failed attempt; later steps queue without touching the server
    outage.down = False
    logger.close()  # the last try is forced
    assert len(outage.client.get_metric_history(run, "loss")) == 5


class Flaky(Outage):
    """log_batch fails on the calls numbered in `fail` (1-based) and records what got through."""

    def __init__(self, client, fail):
        super().__init__(client)
        self.down, self.fail, self.delivered = False, set(fail), []

    def log_batch(self, run_id, metrics=(), **kwargs):
        self.calls += 1
        if self.calls in self.fail:
            raise ConnectionError("connection reset")
        self.delivered += [(m.key, m.step) for m in metrics]
        return self.client.log_batch(run_id, metrics=metrics, **kwargs)


def test_a_retry_after_more_than_one_batch_sends_each_point_once(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db", "guarded")
    run = registry.start_run("job-guarded-batches", {}, {})
    # call 1: the server is down; call 3: it drops again after the first of three batches got through
    flaky = Flaky(registry.client, fail={1, 3})
    registry._client = flaky
    logger = GuardedMetrics(registry, run, retry_every=3600)
    for step in range(1200):  # 2400 points: three batches of at most 1000
        logger.log(step, loss=1.0 / (step + 1), lr=1e-3)
    assert flaky.calls == 1 and len(logger.pending) == 1200
    assert logger.flush(force=True) is False and len(flaky.delivered) == 1000
    assert [s for s, _, _ in logger.pending][:2] == [500, 501]  # the first 500 steps left the queue
    assert logger.flush(force=True) is True and logger.pending == []
    expected = [(key, step) for step in range(1200) for key in ("loss", "lr")]
    assert sorted(flaky.delivered) == sorted(expected)  # every point sent once: none twice, none lost
    history = flaky.client.get_metric_history(run, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(1200)]


def test_a_step_with_more_values_than_a_batch_is_split_without_repeats(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db", "guarded")
    run = registry.start_run("job-guarded-wide", {}, {})
    flaky = Flaky(registry.client, fail={2})
    registry._client = flaky
    logger = GuardedMetrics(registry, run, retry_every=0.0)
    wide = {f"m{i:04d}": float(i) for i in range(1500)}
    assert logger.log(0, **wide) is False and len(flaky.delivered) == 1000
    assert logger.log(1, loss=0.5) is True
    assert sorted(flaky.delivered) == sorted([(k, 0) for k in wide] + [("loss", 1)])
