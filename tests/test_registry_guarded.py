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
