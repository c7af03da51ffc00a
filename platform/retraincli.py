"""`vap retrain`: one retraining cycle (a thin shell over `vap.retrain.retrain`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def retrain(
    config: Path = typer.Option(..., "--config", "-c", help="Job spec YAML (its name prefixes the job; data.source is watched)."),
    policy: str = typer.Option("promote", "--policy", help="promote: move @champion when the spec's registry.promotion gate "
                                                             "passes (as vap promote); register: only register the version."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides of the spec, validated by its schema: trainer.steps=5"),
    gate_only: bool = typer.Option(False, "--gate-only", help="Only the last step, for a job trained elsewhere (the "
                                                               "operator's RayJob): register or gate the spec's job. Exit 3 when the gate refuses."),
    eval_pairs: int = typer.Option(None, "--eval-pairs", min=1, help="Before the gate, `vap eval` the version on this many "
                                   "held-out pairs (its eval.<split>.* metrics, which registry.promotion can require). "
                                   "Default: no evaluation."),
    eval_split: str = typer.Option("val", "--eval-split", help="Split of --eval-pairs: val or unseen."),
    json_out: bool = typer.Option(False, "--json", help="Print the decision as JSON (what the operator reads)."),
) -> None:
    """One idempotent retraining cycle: build the snapshot if the data changed, train the job
    `<name>-<model>-<digest of the data>` (a repeated cycle resumes or does nothing), evaluate it
    (--eval-pairs), then register or promote through the gate. Prints what it decided and why."""
    from vap.retrain import gate_trained
    from vap.retrain import retrain as run_cycle
    from vap.spec import load_spec

    spec = load_spec(config, overrides or ())
    evaluation = {"eval_pairs": eval_pairs, "eval_split": eval_split}
    cycle = gate_trained(spec, policy, **evaluation) if gate_only else run_cycle(spec, policy, **evaluation)
    typer.echo(json.dumps(cycle.as_dict(), indent=1) if json_out else cycle.summary())
    if cycle.decision == "refused":
        raise typer.Exit(3)  # the operator's gate Job reads it (podFailurePolicy): refused, not broken
