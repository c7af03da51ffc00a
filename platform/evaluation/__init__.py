"""Evaluation: the condition recogniser that judges generated clips, the video metrics
(optical-flow proxies, copying, bootstrap intervals) and `vap eval`."""
