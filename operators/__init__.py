"""Scheduled retraining on Kubernetes: the kopf operator of `VAPRetrainSchedule` resources.

`schedule` decides which ticks run (cron in a time zone, catch-up, deadline); `reconcile` turns
one schedule's spec, status and owned objects into actions (RayJobs rendered by `vap.kube`, the
eval/promotion Job, pruning) and the new status; `handlers` is the kopf wiring.
"""
