"""The progress bar's poll: the latest value of one metric, without its history."""

from vap.registry import Registry


def test_latest_metric_is_the_highest_step_whatever_the_logging_order(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db", "expert")
    run_id = registry.start_run("job", {}, {})
    assert registry.latest_metric(run_id, "loss") is None  # nothing logged yet: the bar waits
    for step, loss in [(1, 0.9), (3, 0.5), (2, 0.7)]:  # a resumed run can log an older step last
        registry.log_metrics(run_id, step, loss=loss, lr=step * 1e-3)
    assert registry.latest_metric(run_id, "loss") == (3, 0.5)
    assert registry.latest_metric(run_id, "lr") == (3, 3e-3)
    assert registry.latest_metric(run_id, "grad_norm") is None
